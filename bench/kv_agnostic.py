"""Question-agnostic KV compression and context reuse: tables for docs/RESULTS.md from the suites' JSON.

* ``--matrix FILE ...``: a ``ragcore eval kv --compressor a,b,... --ratio R`` matrix run question-agnostic (its
  full-cache run first): per compressor its accuracy, its paired change against the full cache (points, 95%
  interval) and the KV bytes held; the best change is marked (on a development slice: the choice). Several
  files of the same questions and settings (candidates split over processes, or single runs such as the full
  cache alone) are one table (``eval.kv_compression.merge_matrices``). ``--pool FILE ...`` (repeatable): the same
  compressors on other questions (another slice, its own full-cache run); a second table gives, per compressor run
  on every slice, the change over all their questions together (each question paired with its own slice's full
  cache); ``--against LABEL`` adds the same table against that compressor's runs instead of the full cache.
* ``--reuse FILE ...``: ``ragcore eval kv --reuse Q`` results: accuracy of one compressed context answering Q
  questions against Q full prefills (paired), accuracy per question index, the seconds of both and their ratio
  (wall clock, and processor time of the run's process where measured), the KV bytes held. ``--merge OUT``
  joins results of the same settings on different contexts (e.g. one ``--limit 1 --offset i`` run each) into
  one, written to OUT.

Usage::

    python -m bench.kv_agnostic --matrix out/agnostic-dev.json --write-results kv-agnostic-dev-cpu --note "..."
    python -m bench.kv_agnostic --reuse out/reuse-kv.json --write-results kv-reuse-cpu --note "..."
    python -m bench.kv_agnostic --reuse out/reuse-0.json out/reuse-1.json --merge out/reuse.json ...
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.results import write_section
from eval.kv_compression import merge_matrices, settings_differ
from eval.kv_reuse import merge_reuse
from eval.report import read_json, write_json
from eval.stats import matched_diffs, mean_ci, paired_difference
from ragcore.errors import ConfigError

# points a candidate may lose on the guard data (key-value retrieval) and still be picked: issue 16's reuse tolerance
GUARD_MAX_LOSS = 3.0


def matrix_table(
    m: dict[str, Any], guard: dict[str, Any] | None = None, max_loss: float = GUARD_MAX_LOSS
) -> tuple[str, str]:
    """The matrix's rows as a Markdown table, and the label of the compressor with the best change.

    ``guard``: a matrix of the same compressors on another kind of data (key-value retrieval: exact copies of long
    strings, where a setting that keeps NQ-open's short answers can fail outright). Only a compressor whose change
    there is at least ``-max_loss`` points can be the best; one the guard did not run cannot."""
    runs = m["runs"]
    full = next(r for r in runs if r["compressor"] == "none")
    rows = []
    for r in runs:
        if r["compressor"] == "none" or r.get("shared_baseline"):
            continue
        d, ci = paired_difference(r, full)
        rows.append((r, d, ci))
    held: dict[str, tuple[float, float]] = {}
    if guard is not None:
        g_full = next(r for r in guard["runs"] if r["compressor"] == "none")
        held = {r["compressor"]: paired_difference(r, g_full) for r in guard["runs"] if r["compressor"] != "none"}
    ok = [x for x in rows if guard is None or held.get(x[0]["compressor"], (-1.0, 0))[0] >= -max_loss / 100]
    top = max(ok, key=lambda x: x[1])[0] if ok else None  # one run: a compressor may run at several ratios
    best = top["compressor"] if top else ""
    head = "| compressor | ratio | accuracy | change vs full (points) | kv bytes / full | masks |"
    if guard is not None:
        head += f" change on {guard['format']} (guard: >= -{max_loss:g}) |"
    lines = [
        f"Full cache: {full['accuracy']:.3f} ± {full['accuracy_ci95']:.3f} on {full['n']} questions.",
        "",
        head + " best |",
        "|---" * (head.count("|") - 1 + 1) + "|",
    ]
    for r, d, ci in rows:
        kv = r["kv_bytes"] / r["kv_bytes_full"] if r["kv_bytes_full"] else 0.0
        mark = "**best**" if r is top else ""
        cell = ""
        if guard is not None:
            gd = held.get(r["compressor"])
            cell = " not run |" if gd is None else f" {100 * gd[0]:+.1f} ± {100 * gd[1]:.1f} |"
        lines.append(
            f"| {r['compressor']} | {r['ratio']} | {r['accuracy']:.3f} | {100 * d:+.1f} ± {100 * ci:.1f} | "
            f"{kv:.3f} | {'yes' if r.get('masks_only') else 'no'} |{cell} {mark} |"
        )
    return "\n".join(lines), best


# what pooled slices must share (where both recorded it): everything but their questions
SLICE_SETTINGS = ("format", "model", "query_aware", "k", "max_tokens", "max_new_tokens", "dtype")


def check_slices(slices: list[dict[str, Any]], names: list[str]) -> None:
    """Refuse (``ConfigError``, naming the slice) matrices that cannot be pooled: other settings than the first
    one's, questions another slice holds too, or several ratios (a pooled row is one compressor at one ratio)."""
    seen: dict[str, str] = {}
    for m, name in zip(slices, names):
        if got := settings_differ(m, slices[0], SLICE_SETTINGS):
            raise ConfigError(f"{name} cannot be pooled with {names[0]}: {got}", param="pool")
        ratios = sorted({r["ratio"] for r in m["runs"] if r["compressor"] != "none" and not r.get("shared_baseline")})
        if len(ratios) > 1:
            raise ConfigError(f"{name} holds several ratios {ratios}: pool matrices of one ratio", param="pool")
        full = next(r for r in m["runs"] if r["compressor"] == "none")
        for p in full["predictions"]:
            if p["id"] in seen:
                raise ConfigError(f"{name} holds question {p['id']!r}, which {seen[p['id']]} holds too", param="pool")
            seen[p["id"]] = name


def pooled_table(slices: list[dict[str, Any]], reference: str = "none") -> str:
    """Per compressor run on every slice (matrices of different questions), its change against each slice's own
    full cache (or run of the ``reference`` compressor) on each slice and over all the slices' questions together,
    as a Markdown table. Raises ``ConfigError`` when a slice has no ``reference`` run."""
    fulls = [
        next((r for r in m["runs"] if r["compressor"] == reference and not r.get("shared_baseline")), None)
        for m in slices
    ]
    if any(f is None for f in fulls):
        raise ConfigError(f"no run of {reference!r} in every slice, to compare against", param="against")
    names = [
        r["compressor"]
        for r in slices[0]["runs"]
        if r["compressor"] not in ("none", reference) and not r.get("shared_baseline")
    ]
    spans = [f"{m['offset'] + 1}-{m['offset'] + m['n']}" for m in slices]
    against = "full cache" if reference == "none" else f"run of `{reference}`"
    lines = [
        f"Pooled over questions {', '.join(spans)} ({sum(f['n'] for f in fulls)} questions), each paired with its "
        f"slice's {against} ({against} per slice: " + ", ".join(f"{f['accuracy']:.3f}" for f in fulls) + "):",
        "",
        "| compressor | ratio | " + " | ".join(f"change on {x}" for x in spans) + " | questions | change, pooled |",
        "|---|---|" + "---|" * len(spans) + "---|---|",
    ]
    for name in names:
        runs = [next((r for r in m["runs"] if r["compressor"] == name), None) for m in slices]
        if any(r is None for r in runs):
            continue
        each = [mean_ci(matched_diffs(r, f)) for r, f in zip(runs, fulls)]
        diffs = [d for r, f in zip(runs, fulls) for d in matched_diffs(r, f)]
        d, ci = mean_ci(diffs)
        cells = " | ".join(f"{100 * x:+.1f} ± {100 * c:.1f}" for x, c in each)
        lines.append(f"| {name} | {runs[0]['ratio']} | {cells} | {len(diffs)} | {100 * d:+.1f} ± {100 * ci:.1f} |")
    return "\n".join(lines)


def reuse_table(results: list[dict[str, Any]]) -> str:
    """One row per ``eval kv --reuse`` result, then accuracy per question index."""
    lines = [
        "| data | model | compressor | contexts x Q | context tokens | full | reuse | change (points) | "
        "seconds: Q full prefills | seconds: one prefill + Q answers | speedup | speedup in CPU time | "
        "kv bytes / full |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def name(r: dict[str, Any]) -> str:  # the data, and the questions decoded together when more than one
        return r["format"] + (f" (batch {r['batch_size']})" if r.get("batch_size", 1) > 1 else "")

    for r in results:
        kv = r["kv_bytes"] / r["kv_bytes_full"] if r["kv_bytes_full"] else 0.0
        cpu = f"{r['cpu_speedup']:.2f}x" if "cpu_speedup" in r else "-"  # files written before it was measured
        lines.append(
            f"| {name(r)} | {r['model']} | {r['compressor']} (ratio {r['ratio']}) | {r['contexts']} x "
            f"{r['reuse']} | {r['mean_context_tokens']:.0f} | {r['accuracy_full']:.3f} | {r['accuracy_reuse']:.3f} | "
            f"{100 * r['diff']:+.1f} ± {100 * r['diff_ci95']:.1f} | {r['seconds_full']:.1f} | "
            f"{r['seconds_reuse']:.1f} | {r['speedup']:.2f}x | {cpu} | {kv:.3f} |"
        )
    for r in results:
        if r.get("timings"):
            lines += ["", f"Where the seconds go, per context ({name(r)}, {r['compressor']}; wall clock):", ""]
            lines += [
                "| context | tokens | reuse: prefill + compression | reuse: mean answer | full: mean prefill + "
                "answer | reuse arm | full arm | speedup | speedup in CPU time |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for t in r["timings"]:
                ans, full = t["answer_s"], t["full_s"]
                lines.append(
                    f"| {t['context']} | {t['tokens']} | {t['compress_s']:.1f} | {sum(ans) / len(ans):.1f} | "
                    f"{sum(full) / len(full):.1f} | {t['seconds_reuse']:.1f} | {t['seconds_full']:.1f} | "
                    f"{t['seconds_full'] / t['seconds_reuse']:.2f}x | "
                    f"{t['cpu_seconds_full'] / t['cpu_seconds_reuse']:.2f}x |"
                )
    for r in results:
        lines += ["", f"Accuracy per question index ({name(r)}, {r['compressor']}): full / reuse", ""]
        lines.append("| index | " + " | ".join(str(x["index"] + 1) for x in r["by_index"]) + " |")
        lines.append("|---" * (len(r["by_index"]) + 1) + "|")
        lines.append("| full | " + " | ".join(f"{x['accuracy_full']:.2f}" for x in r["by_index"]) + " |")
        lines.append("| reuse | " + " | ".join(f"{x['accuracy_reuse']:.2f}" for x in r["by_index"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--matrix", nargs="*", default=[], help="question-agnostic `eval kv` matrix JSON files (same questions)"
    )
    ap.add_argument(
        "--pool",
        nargs="+",
        action="append",
        default=[],
        metavar="FILE",
        help="another slice's matrix files (repeatable): a pooled table over every slice's questions",
    )
    ap.add_argument(
        "--guard",
        nargs="+",
        default=None,
        metavar="FILE",
        help="the candidates' matrix files on key-value retrieval: only one losing at most --guard-max-loss points "
        "there can be the best",
    )
    ap.add_argument("--guard-max-loss", type=float, default=GUARD_MAX_LOSS, help="points (default: %(default)s)")
    ap.add_argument(
        "--against",
        default=None,
        metavar="LABEL",
        help="with --pool: a second pooled table, each compressor paired with this compressor's run instead of the "
        "full cache (two versions of one method side by side)",
    )
    ap.add_argument("--best", action="store_true", help="print the label with the best change and stop")
    ap.add_argument("--reuse", nargs="*", default=[], help="`eval kv --reuse` JSON files")
    ap.add_argument(
        "--merge",
        default=None,
        metavar="OUT",
        help="join the --reuse files (same settings, different contexts) into one result, written to OUT",
    )
    ap.add_argument("--title", default=None, help="the section's title")
    ap.add_argument("--note", default="", help="text before the table (where and how it ran)")
    ap.add_argument("--write-results", default=None, metavar="SECTION", help="write this docs/RESULTS.md section")
    a = ap.parse_args(argv)
    if not a.matrix and not a.reuse:
        ap.error("give --matrix or --reuse")
    if a.pool and not a.matrix:
        ap.error("--pool goes with --matrix")
    if a.against and not a.pool:
        ap.error("--against goes with --pool")
    parts = [a.note.strip()] if a.note.strip() else []
    if a.matrix:
        try:
            m = merge_matrices(a.matrix)
        except ConfigError as e:
            ap.error(str(e))
        if m.get("query_aware"):
            ap.error(f"{a.matrix[0]} is query-aware; this table is for question-agnostic runs")
        try:
            guard = merge_matrices(a.guard) if a.guard else None
        except ConfigError as e:
            ap.error(str(e))
        table, best = matrix_table(m, guard, a.guard_max_loss)
        if a.best:
            if not best:
                why = "none holds on the guard data" if guard else "only the full cache: nothing to pick"
                ap.error(f"no compressor in {a.matrix} can be picked ({why})")
            print(best)
            return 0
        where = (  # single runs written before they recorded their data and offset
            f"questions {m['offset'] + 1}-{m['offset'] + m['n']} of `{m['data']}`, top {m['k']}"
            if m.get("offset") is not None and m.get("data")
            else f"{m['n']} questions (data and offset not recorded in the runs: see the note)"
        )
        parts.append(
            f"Question-agnostic (the context compressed before the question is read), {m['model']}, "
            f"{m['format']}, {where}. "
            "Changes are paired per question, in accuracy points (x100), with their 95% intervals. KV bytes are "
            "those held (uneven per-head budgets keep padded slots hidden by masks). Best change: "
            f"`{best}`.\n\n{table}"
        )
        if a.pool:
            try:
                slices = [m] + [merge_matrices(files) for files in a.pool]
                check_slices(slices, [f"--matrix {a.matrix}"] + [f"--pool {files}" for files in a.pool])
            except ConfigError as e:
                ap.error(str(e))
            parts.append(pooled_table(slices))
            if a.against:
                try:
                    parts.append(pooled_table(slices, a.against))
                except ConfigError as e:
                    ap.error(str(e))
    try:
        reuse = [read_json(f) for f in a.reuse]
    except (OSError, ValueError) as e:
        ap.error(f"--reuse: {e}")
    for f, r in zip(a.reuse, reuse):
        if not isinstance(r, dict) or r.get("suite") != "kv-reuse":
            ap.error(f"--reuse: {f} is not an `eval kv --reuse` result")
    if a.merge:
        if not reuse:
            ap.error("--merge needs --reuse files")
        try:
            reuse = [merge_reuse(reuse)]
        except ConfigError as e:
            ap.error(f"--merge: {e}")
        write_json(a.merge, reuse[0])
    if a.reuse:
        parts.append(
            "One context prefilled and compressed once, question-agnostic, answers Q different questions "
            "(`CompressedContext.ask`), against Q full prefills of the full prompt, uncompressed. Changes are "
            "paired per question, in accuracy points (x100), with their 95% intervals; seconds (wall clock) include "
            "every answer's decoding on both sides, and the compression in the reuse arm; the speedup in CPU time is "
            "the same ratio in processor time of the run's process (steadier than wall time on a shared machine; on "
            "a GPU it counts only the host's share).\n\n" + reuse_table(reuse)
        )
    body = "\n\n".join(parts)
    print(body)
    if a.write_results:
        title = a.title or ("KV compression, question-agnostic" if a.matrix else "KV compression: context reuse")
        write_section(a.write_results, title if "(issue #16)" in title else title + " (issue #16)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
