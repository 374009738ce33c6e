"""Figures of issue 14 (attention-driven order and context), from result JSON written by ``ragcore`` commands.

Every run is a ``ragcore`` command that writes its JSON (``ragcore calibrate --out``, ``ragcore eval position |
longctx | crag --out``); this driver renders them into docs/RESULTS.md sections (tables, with the commands that
made them) and plots under docs/figures/. Long-context runs are separate processes so that each length's peak
memory is its own (on CPU, the process's peak resident size).

    python -m bench.rerank_context profile out/profile-smollm2.json out/profile-qwen.json
    python -m bench.rerank_context position out/position-qwen.json --profile out/profile-qwen.json
    python -m bench.rerank_context longctx out/longctx-*.json
    python -m bench.rerank_context crag out/crag-qwen.json
    python -m bench.rerank_context choose-crag out/cragdev-*.json [--section crag-dev]   # prints the chosen spec

``--section`` overrides the section name (default: the kind, with ``--note`` text under the title).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from bench.results import write_section
from eval.report import read_json, same_setting, table
from eval.stats import mean_ci
from ragcore.errors import ConfigError

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"


def _ci(m: float, h: float, pct: bool = True) -> str:
    f = 100 if pct else 1
    return f"{m * f:+.1f} [{(m - h) * f:+.1f}, {(m + h) * f:+.1f}]" if pct else f"{m:.3f} ± {h:.3f}"


def _share(m: float, h: float) -> str:
    """A share in percent with its 95% interval, unsigned (not a change)."""
    return f"{100 * m:.1f} [{100 * max(0.0, m - h):.1f}, {100 * min(1.0, m + h):.1f}]"


def profile_body(profiles: list[dict[str, Any]], figure: str = "attn_profile") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    parts = []
    fig, axes = plt.subplots(1, len(profiles), figsize=(6 * len(profiles), 4), squeeze=False)
    from rerank.attnrank import LAYER_RULE, choose_layer, edge_to_middle

    for ax, p in zip(axes[0], profiles):
        a = np.asarray(p["attention"])
        ratios = edge_to_middle(a)
        if p.get("rule") != LAYER_RULE:  # stored under an earlier rule: the layer AttnRank now follows
            p = {**p, "layer": choose_layer(a), "rule": f"{LAYER_RULE} (stored: layer {p['layer']} by {p.get('rule')})"}
        im = ax.imshow(a, aspect="auto", cmap="viridis")
        ax.set_title(f"{p['model']} (n={p['n']}; chosen layer {p['layer']})")
        ax.set_xlabel("passage slot")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, label="share of passage attention")
        rows = [
            {
                "layer": f"{i}{' (chosen)' if i == p['layer'] else ''}",
                **{f"slot {j}": a[i, j] for j in range(a.shape[1])},
                "edge/middle": ratios[i],
            }
            for i in range(a.shape[0])
        ]
        cols = ["layer", *[f"slot {j}" for j in range(a.shape[1])], "edge/middle"]
        parts.append(
            f"**{p['model']}**: {p['n']} development questions, {a.shape[1]} passages each; layer rule: {p['rule']}. "
            f"Chosen layer {p['layer']}, edge-to-middle ratio {ratios[p['layer']]:.3f}; mean over layers "
            f"{ratios.mean():.3f}.\n\n" + table(rows, cols, "{:.3f}")
        )
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(FIGURES / f"{figure}.png", dpi=110)
    return f"![attention profile per layer and slot](figures/{figure}.png)\n\n" + "\n\n".join(parts)


def position_body(res: dict[str, Any], profile: dict[str, Any] | None, figure: str | None = None) -> str:
    """The sweep's table and plot; the plot goes to ``docs/figures/position_{figure}.png`` (default: the model's
    name), so that each section keeps its own figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = [str(p) for p in res["positions"]]
    for label, s in res["orders"].items():
        lacking = [int(p) + 1 for p in pos if p not in s["accuracy"]]
        if lacking:
            raise ConfigError(f"the {label} order has no accuracy at gold rank {', '.join(map(str, lacking))}")
    rows, cols = (
        [],
        ["order", *[f"gold rank {int(p) + 1}" for p in pos], "average", "vs retrieval (points, 95% CI)", "s/query"],
    )
    fig, axes = plt.subplots(1, 2 if profile else 1, figsize=(11 if profile else 6, 5), squeeze=False)
    for label, s in res["orders"].items():
        diff = _ci(s["diff_vs_retrieval"], s["diff_ci95"]) if "diff_vs_retrieval" in s else "-"
        rows.append(
            {
                "order": label,
                **{f"gold rank {int(p) + 1}": s["accuracy"][p] for p in pos},
                "average": s["accuracy_avg"],
                "vs retrieval (points, 95% CI)": diff,
                "s/query": s["seconds_per_query"],
            }
        )
        axes[0][0].plot([int(p) + 1 for p in pos], [s["accuracy"][p] for p in pos], marker="o", label=label)
    axes[0][0].set_xlabel("relevance rank of the gold passage (= its slot in retrieval order)")
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)  # below the plot
    if profile:
        a = profile["attention"][profile["layer"]]
        axes[0][1].bar(range(1, len(a) + 1), a)
        axes[0][1].set_title(f"measured profile, layer {profile['layer']}")
        axes[0][1].set_xlabel("slot")
        axes[0][1].set_ylabel("share of passage attention")
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    name = f"position_{figure or res['model']}.png".replace("/", "_")
    fig.savefig(FIGURES / name, dpi=110)
    head = (
        f"{res['model']}, n = {res['n']} questions per gold rank (NQ-open from question {res['offset']}), 10 passages "
        "(gold + 9 retrieved distractors without a gold answer). Accuracy per relevance rank given to the gold passage; "
        "each order then places it. Paired differences per question and rank against the retrieval order.\n\n"
    )
    follows = f"\n\n{follows_profile(res, profile)}" if profile and "retrieval" in res["orders"] else ""
    return head + f"![accuracy per position](figures/{name})\n\n" + table(rows, cols, "{:.3f}") + follows


def follows_profile(res: dict[str, Any], profile: dict[str, Any]) -> str:
    """Does accuracy follow the profile? The retrieval order's accuracy with the gold passage at each swept slot
    beside the profile's attention share of that slot (AttnRank's layer), and their Spearman rank correlation over
    the swept slots with an accuracy (scipy.stats.spearmanr; undefined, and said so, with fewer than two such slots
    or a constant accuracy or share). Slots tied for the highest accuracy or share are named together.

    Raises ``ConfigError`` when the profile cannot describe the sweep: another model's profile, a swept slot past
    the profile's last, or a gold rank without the retrieval order's accuracy."""
    from scipy.stats import spearmanr

    pos = [str(p) for p in res["positions"]]
    if profile.get("model") and res.get("model") and profile["model"] != res["model"]:
        raise ConfigError(f"the profile is of {profile['model']!r}, the sweep of {res['model']!r}", param="profile")
    shares = profile["attention"][profile["layer"]]
    if any(int(p) >= len(shares) for p in pos):
        raise ConfigError(
            f"the profile has {len(shares)} slots; the sweep places the gold passage up to slot "
            f"{max(int(p) for p in pos) + 1}",
            param="profile",
        )
    got = res["orders"]["retrieval"]["accuracy"]
    lacking = [int(p) + 1 for p in pos if p not in got]
    if lacking:
        raise ConfigError(f"the retrieval order has no accuracy at gold rank {', '.join(map(str, lacking))}")
    acc = [float(got[p]) for p in pos]
    att = [float(shares[int(p)]) for p in pos]
    pairs = ", ".join(f"slot {int(p) + 1}: {a:.3f} / {t:.3f}" for p, a, t in zip(pos, acc, att))
    ok = [i for i in range(len(pos)) if math.isfinite(acc[i]) and math.isfinite(att[i])]
    over = f"the {len(pos)} slots" if len(ok) == len(pos) else f"the {len(ok)} slots with an accuracy"
    xs, ys = [acc[i] for i in ok], [att[i] for i in ok]
    head = (
        f"Does accuracy follow the profile? Retrieval order, accuracy / attention share of the slot (profile layer "
        f"{profile['layer']}): {pairs}. "
    )
    if len(ok) < 2 or len(set(xs)) < 2 or len(set(ys)) < 2:
        why = "fewer than two slots" if len(ok) < 2 else "the accuracy" if len(set(xs)) < 2 else "the share"
        same = "" if len(ok) < 2 else " is the same at every slot"
        return head + f"Spearman's rank correlation over {over}: undefined ({why}{same})."
    rho = spearmanr(xs, ys).statistic

    def tops(vs: list[float]) -> list[int]:
        return [int(pos[i]) + 1 for i, v in zip(ok, vs) if v == max(vs)]

    best_acc, best_att = tops(xs), tops(ys)
    names = ", ".join(map(str, best_att))
    if len(best_acc) > 1:
        where = "the slots where the gold passage is answered best"
        verb = "is one of" if len(best_att) == 1 and best_att[0] in best_acc else "is not among"
        if len(best_att) > 1:
            verb = "are among" if set(best_att) <= set(best_acc) else "are not all among"
        told = f"{verb} {where} ({', '.join(map(str, best_acc))})"
    else:
        where = "the one where the gold passage is answered best"
        if len(best_att) == 1:
            told = f"{'is' if best_att == best_acc else 'is not'} {where} ({best_acc[0]})"
        else:
            told = f"{'include' if best_acc[0] in best_att else 'do not include'} {where} ({best_acc[0]})"
    slot = "slot" if len(best_att) == 1 else "slots"
    return head + f"Spearman's rank correlation over {over}: {rho:+.2f}; the most attended {slot} ({names}) {told}."


PEER = "infini-retri"  # method names of the authors' package (bench.peers.infini_retri.peer)


def _family(method: str) -> str:
    return "peer" if method.startswith(PEER) else method.split("(")[0].strip()


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def peer_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ragcore's ``infiniretri`` runs against the peer's at the same model, data and length, on the items both
    ran (paired by id): accuracy side by side, ours/peer ratios of wall and CPU seconds and of peak memory, and how
    many times faster ours is per item (:func:`speedup_ci`)."""
    rows = []
    for peer in (r for r in runs if _family(r["method"]) == "peer"):
        for ours in runs:
            same = (
                all(ours[k] == peer[k] for k in ("model", "tokens"))
                and Path(ours["data"]).name == Path(peer["data"]).name
            )
            if not same or _family(ours["method"]) != "infiniretri":
                continue
            p_by = {x["id"]: x for x in peer["predictions"]}
            both = [(x, p_by[x["id"]]) for x in ours["predictions"] if x["id"] in p_by]
            if not both:
                continue
            cpu = [(x.get("cpu_seconds"), y.get("cpu_seconds")) for x, y in both]
            cpu_ok = all(c is not None for pair in cpu for c in pair)
            rows.append(
                {
                    "model": ours["model"],
                    "tokens": ours["tokens"],
                    "ours": ours["method"],
                    "peer": peer["method"],
                    "n (paired)": len(both),
                    "accuracy ours": _mean([x["accuracy"] for x, _ in both]),
                    "accuracy peer": _mean([y["accuracy"] for _, y in both]),
                    "s/query ours/peer": _mean([x["seconds"] for x, _ in both])
                    / _mean([y["seconds"] for _, y in both]),
                    "CPU s/query ours/peer": (
                        _mean([c[0] for c in cpu]) / _mean([c[1] for c in cpu]) if cpu_ok else "-"
                    ),
                    "peak memory ours/peer": ours["peak_mem_bytes"] / peer["peak_mem_bytes"],
                    "x faster (95% CI)": speedup_ci([y["seconds"] for _, y in both], [x["seconds"] for x, _ in both]),
                }
            )
    return sorted(rows, key=lambda r: (r["model"], r["tokens"], r["ours"]))


def speedup_ci(slow: list[float], fast: list[float]) -> str:
    """How many times faster ``fast`` is than ``slow``, per item paired: the geometric mean of ``slow_i / fast_i``
    with its 95% interval (a normal interval on the mean log ratio, exponentiated), as ``"5.2x [4.9, 5.5]"``."""
    logs = [math.log(a / b) for a, b in zip(slow, fast) if a > 0 and b > 0]
    if not logs:
        return "-"
    m, h = mean_ci(logs)
    return f"{math.exp(m):.2f}x [{math.exp(m - h):.2f}, {math.exp(m + h):.2f}]"


def growth_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Peak memory at the longest input over that at the shortest, per model, data and method."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["model"], Path(r["data"]).name, r["method"]), []).append(r)
    rows = []
    for (model, data, method), rs in sorted(groups.items()):
        lo, hi = min(rs, key=lambda r: r["tokens"]), max(rs, key=lambda r: r["tokens"])
        if hi["tokens"] == lo["tokens"]:
            continue
        rows.append(
            {
                "model": model,
                "data": data,
                "method": method,
                "lengths": f"{hi['tokens']} / {lo['tokens']}",
                "peak MiB (long)": hi["peak_mem_bytes"] / 2**20,
                "peak MiB (short)": lo["peak_mem_bytes"] / 2**20,
                "ratio": hi["peak_mem_bytes"] / lo["peak_mem_bytes"],
            }
        )
    return rows


def longctx_body(runs: list[dict[str, Any]]) -> str:
    rows = [
        {
            "model": r["model"],
            "data": Path(r["data"]).name,
            "method": r["method"],
            "tokens": r["tokens"],
            "n": r["n"],
            "accuracy": r["accuracy"],
            "ci95": r["ci95"],
            "s/query": r["seconds_per_query"],
            "CPU s/query": r.get("cpu_seconds_per_query", "-"),
            "peak MiB": r["peak_mem_bytes"] / 2**20,
            "prompt tokens read": r["prompt_tokens_mean"],
            "answer kept": r.get("answer_in_prompt", "-"),
            "device": r["device"],
        }
        for r in sorted(runs, key=lambda r: (r["model"], r["data"], r["method"], r["tokens"]))
    ]
    cols = list(rows[0]) if rows else []
    out = (
        "Peak memory: the GPU's peak allocation, or on CPU the process's peak resident size (model included). "
        "s/query: wall clock; CPU s/query: the process's CPU time per query (comparable when the CPU is shared). "
        "Prompt tokens read: the prompt the answer is generated from; answer kept: the share of those prompts that hold "
        "the answer's value (- where the run predates the field).\n\n" + table(rows, cols, "{:.3f}")
    )
    pr = peer_rows(runs)
    if pr:
        out += (
            "\n\n**Against the authors' package** (`infini-retri` 0.0.3, `bench.peers.infini_retri`; same items, "
            "paired by id; ratios below 1: ragcore faster or smaller; x faster: the geometric mean over items of the "
            "peer's seconds over ours, with its 95% interval):\n\n" + table(pr, list(pr[0]), "{:.3f}")
        )
    gr = growth_rows(runs)
    if gr:
        out += "\n\n**Peak memory, longest over shortest input:**\n\n" + table(gr, list(gr[0]), "{:.3f}")
    return out


def crag_body(res: dict[str, Any]) -> str:
    arm = res["method"]
    rows = [
        {
            "arm": a,
            "accuracy": res[a]["accuracy"][0],
            "ci95": res[a]["accuracy"][1],
            "generator input tokens": res[a]["tokens_mean"],
            "s/query": res[a]["seconds_per_query"],
        }
        for a in ("plain", arm)
    ]
    kept = (
        f" A gold answer is still in the condensed passages for {_share(res['answer_kept'], res['answer_kept_ci95'])} % "
        f"of the {res['answer_kept_n']} questions whose plain top {res['k']} holds one."
        if "answer_kept" in res
        else ""
    )
    return (
        f"{res['model']}, NQ-open, top {res['k']} hybrid-retrieved passages, n = {res['n']}. {arm} against plain top "
        f"{res['k']}, paired per question: tokens saved {_ci(res['tokens_saved'], res['tokens_saved_ci95'])} %, "
        f"accuracy change {_ci(res['accuracy_diff'], res['accuracy_diff_ci95'])} points.{kept}\n\n"
        + table(rows, ["arm", "accuracy", "ci95", "generator input tokens", "s/query"], "{:.3f}")
    )


TOKENS_SAVED = 0.46  # issue 14: CRAG needs at least 46% fewer generator input tokens than plain top-10


def dev_orders(text: str) -> list[str]:
    """The orders a development choice compares (``gpu_rerank_context.sh sortboth``'s ``SORT_SPECS``):
    ``';'``-separated reranker specs, each one reranker (its own options may hold commas), returned as their labels
    (the keys ``eval position`` writes), so that the choice is checked before any run starts.

    Raises ``ConfigError`` quoting the text for an empty spec, several rerankers in one spec, a spec the registry
    refuses (unknown name or option, a bad value), or two specs of one setting (their runs would collide)."""
    from eval.position import parse_orders
    from ragcore.registry import registry

    specs = [s.strip() for s in text.split(";")]
    if not any(specs) or "" in specs:
        raise ConfigError(f"an empty spec in {text!r} (';' separates reranker specs)", param="specs")
    labels: dict[str, str] = {}
    for spec in specs:
        if len(parse_orders(spec)) != 1:
            raise ConfigError(f"one reranker per spec (';' separates them), got {spec!r}", param="specs")
        label = registry("reranker").build(spec).label
        if label in labels:
            raise ConfigError(f"{labels[label]!r} and {spec!r} are one setting ({label})", param="specs")
        labels[label] = spec
    return list(labels)


def choose_crag(runs: list[dict[str, Any]]) -> str:
    """The CRAG setting (``method`` spec) of the development runs that, among those saving at least
    :data:`TOKENS_SAVED` of the tokens (all of them if none does), loses the least accuracy against plain top k, or,
    when the runs did not generate (``eval crag --no-generate``), keeps a gold answer in the most questions; ties go
    to the one saving more. Raises ``ConfigError`` naming the runs that lack the measure read."""
    measure = "accuracy_diff" if all("accuracy_diff" in r for r in runs) else "answer_kept"
    lacking = [r["method"] for r in runs if measure not in r]
    if lacking:
        raise ConfigError(f"choose-crag reads {measure} of every run; these have none: {lacking}", param="runs")
    ok = [r for r in runs if r["tokens_saved"] >= TOKENS_SAVED] or list(runs)
    return max(ok, key=lambda r: (r[measure], r["tokens_saved"]))["method"]


def crag_dev_body(runs: list[dict[str, Any]]) -> str:
    chosen = choose_crag(runs)
    generated = all("accuracy_diff" in r for r in runs)
    cols = ["setting", "tokens saved %", "answer kept %", "accuracy change (points)", "n"]
    rows = [
        {
            "setting": f"`{r['method']}`" + (" (chosen)" if r["method"] == chosen else ""),
            "tokens saved %": _ci(r["tokens_saved"], r["tokens_saved_ci95"]),
            "answer kept %": _share(r["answer_kept"], r["answer_kept_ci95"]) if "answer_kept" in r else "-",
            "accuracy change (points)": _ci(r["accuracy_diff"], r["accuracy_diff_ci95"]) if generated else "-",
            "n": r["n"],
        }
        for r in runs
    ]
    if not generated:
        cols.remove("accuracy change (points)")
    if not any("answer_kept" in r for r in runs):
        cols.remove("answer kept %")
    rule = (
        "least accuracy lost"
        if generated
        else "most questions keeping a gold answer in the condensed passages (among those whose plain top "
        f"{runs[0]['k']} holds one; no generation)"
    )
    return (
        f"{runs[0]['model']}, {runs[0]['n']} NQ-open questions from question {runs[0].get('offset', 0) + 1}"
        f" (development), top {runs[0]['k']}: each CRAG setting against plain top {runs[0]['k']}, paired. Chosen: the "
        f"{rule} among settings saving at least {TOKENS_SAVED:.0%} of the tokens.\n\n" + table(rows, cols, "{}")
    )


def _load(a: argparse.Namespace) -> list[dict[str, Any]]:
    """The result JSON of ``a.files`` (gzip or plain), CRAG shards of one method merged exactly; ``crag`` renders
    one method and refuses several."""
    data = [read_json(f) for f in a.files]
    if a.kind not in ("crag", "choose-crag"):
        return data
    from eval.context_suites import merge_crag

    bad = [f for f, r in zip(a.files, data) if not isinstance(r, dict) or r.get("suite") != "crag"]
    if bad:
        raise ConfigError(f"not crag results (ragcore eval crag --out): {', '.join(map(str, bad))}")
    by: dict[str, list[dict[str, Any]]] = {}
    for r in data:
        by.setdefault(r["method"], []).append(r)
    if a.kind == "crag" and len(by) > 1:
        raise ConfigError(f"crag renders one setting's shards, got {sorted(by)} (choose-crag compares settings)")
    merged = [rs[0] if len(rs) == 1 else merge_crag(rs) for rs in by.values()]
    same_setting(merged, ("model", "k", "data", "offset", "n"), "the settings compared need runs")
    answered = {r["method"]: "accuracy_diff" in r for r in merged}
    if len(set(answered.values())) > 1:
        raise ConfigError(
            "runs with answers and runs without (eval crag --no-generate) cannot be compared: "
            f"without: {sorted(m for m, g in answered.items() if not g)}"
        )
    if a.kind == "crag" and not all(answered.values()):
        raise ConfigError("crag renders runs with answers; these were made with --no-generate (choose-crag reads them)")
    return merged


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.rerank_context", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("kind", choices=["profile", "position", "longctx", "crag", "choose-crag"])
    p.add_argument("files", nargs="+")
    p.add_argument("--profile", default=None, help="position: the profile JSON plotted beside the accuracy")
    p.add_argument("--section", default=None)
    p.add_argument("--note", default="", help="a line under the title (where it ran)")
    a = p.parse_args(argv)
    try:
        data = _load(a)
    except (ConfigError, KeyError, TypeError, OSError, ValueError) as e:  # bad files: one line, no traceback
        p.error(f"{a.kind}: {type(e).__name__ if isinstance(e, KeyError) else ''}{e}")
    if a.kind == "choose-crag":
        try:
            chosen = choose_crag(data)
        except ConfigError as e:
            p.error(f"{a.kind}: {e}")
        print(chosen)
        if a.section:
            body = (a.note + "\n\n" if a.note else "") + crag_dev_body(data)
            write_section(a.section, "CRAG: the setting chosen on the development slice", body)
        return 0
    if a.kind == "profile":
        body, title = (
            profile_body(data, a.section or "attn_profile"),
            "Positional attention profile (AttnRank calibration)",
        )
    elif a.kind == "position":
        try:  # a profile that cannot describe the sweep: one line, no traceback
            prof = read_json(a.profile) if a.profile else None
            body = position_body(data[0], prof, a.section)
        except (ConfigError, KeyError, TypeError, IndexError, OSError, ValueError) as e:
            p.error(f"{a.kind}: {type(e).__name__ if isinstance(e, (KeyError, IndexError)) else ''}{e}")
        title = f"Position sweep: accuracy per gold position and order ({data[0]['model']})"
    elif a.kind == "longctx":
        against = [
            name
            for fam, name in (("truncate", "truncation"), ("peer", "the authors' infini-retri"))
            if any(_family(r["method"]) == fam for r in data)
        ]
        title = "Long inputs: InfiniRetri" + (" against " + " and ".join(against) if against else "")
        body = longctx_body(data)
    else:
        body, title = crag_body(data[0]), f"CRAG against plain top-{data[0]['k']} ({data[0]['model']})"
    write_section(a.section or a.kind, title, (a.note + "\n\n" if a.note else "") + body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
