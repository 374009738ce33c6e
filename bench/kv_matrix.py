"""KV-cache compression matrix: every compressor x ratio in one process, one JSON, one accuracy-vs-ratio plot,
optionally a docs/RESULTS.md section (``kv-*``). The matrix itself is ``eval.kv_compression.KVSuite.matrix`` (also
``ragcore eval kv --compressor a,b --ratio 0.5,0.75``); this driver adds checkpoints, merging, the plot and the
section.

    python -m bench.kv_matrix --data eval/data/nq_open_oracle_dev.jsonl.gz --limit 100 --out results/kv.json
    python -m bench.kv_matrix --data kv_retrieval_75_keys.jsonl.gz --max-tokens 2048 --compressors snapkv,tova
    python -m bench.kv_matrix --merge a.json b.json --out merged.json --write-results SECTION
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from bench.results import write_section
from compress.kv import COMPRESSORS
from eval.kv_compression import MATRIX_RATIOS, KVSuite, merge_matrices
from eval.report import table, write_json
from eval.stats import paired_difference
from ragcore.errors import ConfigError
from ragcore.registry import split_top

logger = logging.getLogger("bench.kv_matrix")

FORMAT_SHOWN = {"nq": "nq", "kv_retrieval": "kv"}  # the data format as RESULTS.md sections have always shown it


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Accuracy against ratio, one line per compressor and the full cache as a dotted line; a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_name: dict[str, list[tuple[float, float, float]]] = {}
    for r in result["runs"]:
        if r["compressor"] != "none":
            by_name.setdefault(r["compressor"], []).append((r["ratio"], r["accuracy"], r["accuracy_ci95"]))
    for name, pts in by_name.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    base = next((r for r in result["runs"] if r["compressor"] == "none"), None)  # --no-baseline: none
    if base is not None:
        ax.axhline(
            base["accuracy"], color="grey", linestyle=":", label=f"no compression (±{base['accuracy_ci95']:.2f})"
        )
    ax.set_xlabel("fraction of the context's KV cache removed")
    ax.set_ylabel("accuracy")
    mode = "query-aware" if result["query_aware"] else "question-agnostic"
    ax.set_title(f"{result['model']} on {Path(result['data']).name} (n={result['n']}, {mode})", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="NQ-open or key-value retrieval file (default: bundled NQ-open)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument(
        "--compressors",
        default=",".join(COMPRESSORS),
        help="comma-separated names (wrapper:inner and name(key=value) allowed)",
    )
    p.add_argument("--ratios", default=",".join(map(str, MATRIX_RATIOS)))
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--offset", type=int, default=0, help="skip the first N items (a development slice)")
    p.add_argument("--no-baseline", action="store_true", help="skip the full cache (another process runs it)")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--query-aware", action="store_true")
    p.add_argument("--retrieved", default=None, help="top k from a `ragcore eval retrieval --dump-retrieved` file")
    p.add_argument("--out", default="results/kv_matrix.json")
    p.add_argument("--plot", default=None, help="PNG path (default: beside --out)")
    p.add_argument("--write-results", default=None, metavar="SECTION", help="also write docs/RESULTS.md section")
    p.add_argument("--batch-size", type=int, default=1, help="items decoded together (same answers; for GPUs)")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON", help="combine finished runs into --out")
    p.add_argument("--note", default=None, help="a sentence put before the --write-results table (e.g. where it ran)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        ratios = [float(x) for x in a.ratios.split(",") if x.strip()]
    except ValueError as e:
        print(f"kv_matrix: error: bad --ratios {a.ratios!r}: {e}", file=sys.stderr)
        return 2
    names = [x.strip() for x in split_top(a.compressors, ",") if x.strip()]
    expected = (ConfigError, OSError, KeyError, json.JSONDecodeError) if a.merge else (ConfigError, FileNotFoundError)
    try:
        if a.merge:
            res = merge_matrices(a.merge)
        else:
            suite = KVSuite(
                model=a.model,
                device=a.device,
                limit=a.limit,
                offset=a.offset,
                k=a.k,
                max_tokens=a.max_tokens,
                max_new_tokens=a.max_new_tokens,
                query_aware=a.query_aware,
                batch_size=a.batch_size,
                retrieved=a.retrieved,
            )
            save = lambda partial: write_json(a.out, {**partial, "complete": False})  # noqa: E731
            res = {**suite.matrix(a.data, names, ratios, baseline=not a.no_baseline, checkpoint=save), "complete": True}
    except expected as e:
        print(f"kv_matrix: error: {e}", file=sys.stderr)
        return 2
    out = write_json(a.out, res)
    png = plot(res, a.plot or Path(a.out).with_suffix(".png"))
    logger.info("wrote %s and %s", out, png)
    if a.write_results:
        write_results(a.write_results, {**res, "plot": str(png), "note": a.note})
    return 0


def write_results(section: str, res: dict[str, Any]) -> None:
    """A docs/RESULTS.md section: accuracy (with its interval) and the change against the full cache."""
    base = next(r for r in res["runs"] if r["compressor"] == "none")
    rows = [
        {
            "compressor": r["compressor"],
            "ratio": r["ratio"],
            "accuracy": f"{r['accuracy']:.3f} ± {r['accuracy_ci95']:.3f}",
            "vs full cache (paired 95% CI)": "{:+.3f} ± {:.3f}".format(*paired_difference(r, base)),
            "kv bytes / full": f"{r['kv_bytes'] / r['kv_bytes_full']:.3f}",
            "masks_only": r.get("masks_only", False),
            "prefill_s": r["prefill_s"],
            "decode_tok_s": r["decode_tok_s"],
        }
        for r in res["runs"]
        if not r.get("shared_baseline")
    ]
    mode = "query-aware" if res["query_aware"] else "question-agnostic (context compressed before the question)"
    k = f", top {res['k']}" if res["format"] == "nq" and res.get("k") else ""
    fmt = FORMAT_SHOWN.get(res["format"], res["format"])
    body = (
        (f"{res['note'].strip()}\n\n" if res.get("note") else "")
        + f"{Path(res['model']).name} on {Path(res['data']).name} ({fmt}{k}), n = {res['n']} per row, {mode}; "
        f"decoding batch {res.get('batch_size', 1)}; plot: `{res['plot']}`."
        + ("" if res.get("complete", True) else " Incomplete: the run was stopped before every configuration finished.")
        + "\n\n"
        + table(rows, list(rows[0]), "{:.3f}")
    )
    write_section(section, f"KV-cache compression: {section} (issue #3)", body)


if __name__ == "__main__":
    sys.exit(main())
