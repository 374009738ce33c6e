"""Issue #3's headline without peeking: the compressor is chosen on a development slice of questions and reported
on the headline's own questions.

Reads ``bench/kv_matrix.py`` JSON files (.json or .json.gz) of two slices of NQ-open (``--dev``: e.g. questions
301-600, ``--head``: questions 1-300), each holding runs of the candidates at the same ratios. For every ratio the
candidate with the best paired change against the full cache on the development slice is chosen (ties: the first
in ``--dev`` order), and every candidate's change on the headline slice is shown beside it. The full-cache run of
a slice may come from other files (``--baseline``), matched by the slice's offset and size.

    python bench/kv_headline.py --dev out/dev-*.json --head out/head-*.json --baseline out/r1/*.json \\
        --write-results kv-headline-select-gpu --note "where it ran"
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kv_matrix import paired_difference  # noqa: E402
from results import read_json, write_section  # noqa: E402

logger = logging.getLogger("bench.kv_headline")
TARGETS = {0.5: 0.01, 0.75: 0.03}  # issue #3: the most a compressor may lose against the full cache


def load_slice(paths: list[str], baselines: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]], dict]:
    """(full-cache run, candidate runs in file order, the slice's description) of one slice."""
    files = [read_json(p) for p in paths]
    if not files:
        raise SystemExit("kv_headline: error: a slice needs at least one file")
    key = ("data", "model", "n", "offset", "query_aware", "k")
    desc = {k: files[0].get(k) for k in key}
    for p, d in zip(paths, files):
        if {k: d.get(k) for k in key} != desc:
            raise SystemExit(f"kv_headline: error: {p!r} is another slice: { ({k: d.get(k) for k in key}) } vs {desc}")
    full = None
    for d in [*files, *(read_json(p) for p in baselines)]:
        if all(d.get(k) == desc[k] for k in ("data", "model", "n", "offset", "query_aware", "k")):
            full = full or next((r for r in d["runs"] if r["compressor"] == "none"), None)
    if full is None:
        raise SystemExit(f"kv_headline: error: no full-cache run for the slice {desc} in the files or --baseline")
    runs = [r for d in files for r in d["runs"] if r["compressor"] != "none" and not r.get("shared_baseline")]
    return full, runs, desc


def render(dev: tuple, head: tuple) -> str:
    (dev_full, dev_runs, dev_desc), (head_full, head_runs, head_desc) = dev, head
    on_head = {(r["compressor"], r["ratio"]): r for r in head_runs}
    lines = [
        f"Full cache: {dev_full['accuracy']:.3f} on the development slice (questions {dev_desc['offset'] + 1}-"
        f"{dev_desc['offset'] + dev_desc['n']}), {head_full['accuracy']:.3f} ± {head_full['accuracy_ci95']:.3f} on "
        f"the headline slice (questions {head_desc['offset'] + 1}-{head_desc['offset'] + head_desc['n']}); "
        f"{Path(head_desc['model']).name}, NQ-open top {head_desc['k']}, "
        f"{'query-aware' if head_desc['query_aware'] else 'question-agnostic'}. Changes are paired, in accuracy "
        "points (x100), with their 95% intervals. KV bytes are those held after compression (per-head budgets keep "
        "padded slots hidden by masks, so they can exceed 1 - ratio).",
        "",
    ]
    verdicts = []
    for ratio in sorted({r["ratio"] for r in dev_runs}):
        rows = []
        for r in (r for r in dev_runs if r["ratio"] == ratio):
            d, ci = paired_difference(r, dev_full)
            h = on_head.get((r["compressor"], ratio))
            hd = paired_difference(h, head_full) if h else None
            rows.append((d, ci, r["compressor"], h, hd))
        best = max(rows, key=lambda x: x[0])  # max keeps the first of equals: file order breaks ties
        lines += [
            f"Ratio {ratio}:",
            "",
            "| compressor | dev: change | headline: accuracy | headline: change | headline: kv bytes / full | chosen on dev |",
            "|---|---|---|---|---|---|",
        ]
        for d, ci, name, h, hd in sorted(rows, key=lambda x: -x[0]):
            acc = f"{h['accuracy']:.3f}" if h else "not run"
            change = f"{100 * hd[0]:+.1f} ± {100 * hd[1]:.1f}" if hd else ""
            mark = "**chosen**" if name == best[2] else ""
            held = f"{h['kv_bytes'] / h['kv_bytes_full']:.3f}" if h else ""  # bytes held, padded slots included
            lines.append(f"| {name} | {100 * d:+.1f} ± {100 * ci:.1f} | {acc} | {change} | {held} | {mark} |")
        lines.append("")
        if best[4] is not None and ratio in TARGETS:
            ok = -best[4][0] <= TARGETS[ratio] + 1e-9
            verdicts.append(
                f"at {ratio}: {best[2]} {100 * best[4][0]:+.1f} ± {100 * best[4][1]:.1f} points on the headline "
                f"questions, target at most -{100 * TARGETS[ratio]:.0f}: {'met' if ok else 'not met'}"
            )
    if verdicts:
        lines.append("Headline (compressor chosen on the development slice): " + "; ".join(verdicts) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dev", nargs="+", required=True, metavar="JSON", help="runs on the development slice")
    ap.add_argument("--head", nargs="+", required=True, metavar="JSON", help="runs on the headline slice")
    ap.add_argument("--baseline", nargs="*", default=[], metavar="JSON", help="files holding the full-cache runs")
    ap.add_argument("--write-results", default=None, metavar="SECTION", help="also write docs/RESULTS.md section")
    ap.add_argument("--note", default=None, help="a sentence put before the tables (e.g. where it ran)")
    ap.add_argument("--title", default="headline chosen on a development slice", help="the section's title")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    body = render(load_slice(a.dev, a.baseline), load_slice(a.head, a.baseline))
    logger.info("%s", body)
    if a.write_results:
        note = f"{a.note.strip()}\n\n" if a.note else ""
        write_section(a.write_results, f"KV-cache compression: {a.title} (issue #3)", note + body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
