"""KV-cache compression matrix: every compressor x ratio in one process, one JSON, one accuracy-vs-ratio plot.

The model, the retriever and the prompts are built once. Ratio 0 removes nothing, so it is run once (as
``none``) and shared by every compressor's curve (marked ``"shared_baseline": true`` in the JSON).

    python bench/kv_matrix.py --data eval/data/nq_open_oracle_dev.jsonl.gz --limit 100 --out results/kv.json
    python bench/kv_matrix.py --data kv_retrieval_75_keys.jsonl.gz --max-tokens 2048 --compressors snapkv,tova
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # results

from compress.kv import COMPRESSORS, get_compressor, split_top  # noqa: E402
from eval.datasets import NQ_OPEN  # noqa: E402
from eval.kv import load_items, run_items  # noqa: E402
from eval.metrics import mean_ci  # noqa: E402
from eval.report import write_json  # noqa: E402
from ragcore.errors import ConfigError  # noqa: E402
from ragcore.generator import Generator  # noqa: E402

logger = logging.getLogger("bench.kv_matrix")

RATIOS = (0.0, 0.25, 0.5, 0.75, 0.9)


def run_matrix(
    data: str | None,
    model: str,
    compressors: list[str],
    ratios: list[float],
    limit: int | None,
    k: int,
    max_tokens: int | None,
    max_new_tokens: int | None,
    device: str | None,
    query_aware: bool,
    progress: bool = True,
    retrieved: str | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    batch_size: int = 1,
    offset: int = 0,
    baseline: bool = True,
) -> dict[str, Any]:
    if not baseline and 0 in ratios:
        raise ConfigError("ratio 0 is the full-cache baseline; it cannot be skipped with --no-baseline")
    for name in compressors:  # fail on a bad name before loading anything
        get_compressor(name, ratio=0.5)
    for r in ratios:
        if not 0 <= r < 1:
            raise ConfigError(f"ratios must be in [0, 1), got {r!r}")
    t0 = time.perf_counter()
    gen = Generator(model, device=device)
    fmt, items = load_items(gen, data, k, limit, max_tokens, max_new_tokens, progress, retrieved, offset)
    logger.info("%d %s items ready in %.1fs", len(items), fmt, time.perf_counter() - t0)
    runs: list[dict[str, Any]] = []
    if baseline:  # a process that runs beside another on the same items may leave the full cache to that one
        full = run_items(gen, fmt, items, "none", 0.0, max_new_tokens, query_aware, progress, batch_size)
        runs.append(full)

    def result() -> dict[str, Any]:
        return {
            "data": str(data or NQ_OPEN),
            "format": fmt,
            "model": model,
            "n": len(items),
            "offset": offset,
            "query_aware": query_aware,
            "ratios": ratios,
            "compressors": compressors,
            "k": k,
            "batch_size": batch_size,
            "seconds": time.perf_counter() - t0,
            "runs": runs,
        }

    if checkpoint:
        checkpoint(result())
    for name in compressors:
        for r in ratios:
            if r == 0:
                runs.append({**full, "compressor": get_compressor(name).label, "shared_baseline": True})
                continue
            res = run_items(gen, fmt, items, name, r, max_new_tokens, query_aware, progress, batch_size)
            logger.info(
                "%s ratio %.2f: accuracy %.3f, kv %.0f / %.0f bytes",
                name,
                r,
                res["accuracy"],
                res["kv_bytes"],
                res["kv_bytes_full"],
            )
            runs.append(res)
            if checkpoint:  # a run stopped by a time limit keeps every finished configuration
                checkpoint(result())
    return result()


def merge(paths: list[str]) -> dict[str, Any]:
    """One matrix from several runs of the same data, model, n and mode (e.g. compressors split over processes):
    the full-cache baseline of the first file that has one is kept, the others' are dropped; a compressor and ratio
    run again in a later file (a rerun, a fill) keeps its place and takes the later run."""
    from results import read_json

    parts = [read_json(f) for f in paths]
    if not parts:
        raise ConfigError("--merge needs at least one JSON file")
    key = ("data", "format", "model", "n", "offset", "query_aware")
    for d in parts:
        d.setdefault("offset", 0)  # files from before --offset existed start at the first item
    for f, d in zip(paths, parts):
        if any(d.get(k) != parts[0].get(k) for k in key):
            got = {k: d.get(k) for k in key}
            raise ConfigError(f"{f!r} is not the same matrix as {paths[0]!r}: {got}")
    full = [[r for r in d["runs"] if r["compressor"] == "none"] for d in parts]
    runs = next((f for f in full if f), None)
    if runs is None:
        raise ConfigError(f"no full-cache ('none') run in any of {paths}: run one file without --no-baseline")
    rows: dict[tuple[str, float], dict[str, Any]] = {}  # a later file's run of the same cell replaces an earlier one
    for d in parts:
        rows.update({(r["compressor"], r["ratio"]): r for r in d["runs"] if r["compressor"] != "none"})
    runs += list(rows.values())
    names = list(dict.fromkeys(r["compressor"] for r in runs if r["compressor"] != "none"))
    ratios = sorted({r["ratio"] for r in runs})
    complete = all(d.get("complete", False) for d in parts)
    return {
        **parts[0],
        "runs": runs,
        "compressors": names,
        "ratios": ratios,
        "merged_from": paths,
        "complete": complete,
    }


def paired_diffs(run: dict[str, Any], base: dict[str, Any]) -> list[float]:
    """Per question, the run's accuracy minus ``base``'s (the questions both answered)."""
    ref = {p["id"]: p["accuracy"] for p in base["predictions"]}
    return [p["accuracy"] - ref[p["id"]] for p in run["predictions"] if p["id"] in ref]


def paired_difference(run: dict[str, Any], base: dict[str, Any]) -> tuple[float, float]:
    """Accuracy change against ``base`` on the same questions, and the half-width of its paired 95% interval."""
    return mean_ci(paired_diffs(run, base))


def plot(result: dict[str, Any], path: str | Path) -> Path:
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
    p.add_argument("--ratios", default=",".join(map(str, RATIOS)))
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
    if a.merge:
        try:
            res = merge(a.merge)
        except (ConfigError, OSError, KeyError, json.JSONDecodeError) as e:
            print(f"kv_matrix: error: {e}", file=sys.stderr)
            return 2
        return finish(a, res)
    try:
        res = run_matrix(
            a.data,
            a.model,
            names,
            ratios,
            a.limit,
            a.k,
            a.max_tokens,
            a.max_new_tokens,
            a.device,
            a.query_aware,
            retrieved=a.retrieved,
            checkpoint=lambda partial: write_json(a.out, {**partial, "complete": False}),
            batch_size=a.batch_size,
            offset=a.offset,
            baseline=not a.no_baseline,
        )
    except (ConfigError, FileNotFoundError) as e:
        print(f"kv_matrix: error: {e}", file=sys.stderr)
        return 2
    return finish(a, {**res, "complete": True})


def finish(a: argparse.Namespace, res: dict[str, Any]) -> int:
    out = write_json(a.out, res)
    png = plot(res, a.plot or Path(a.out).with_suffix(".png"))
    logger.info("wrote %s and %s", out, png)
    if a.write_results:
        write_results(a.write_results, {**res, "plot": str(png), "note": a.note})
    return 0


def write_results(section: str, res: dict[str, Any]) -> None:
    """A docs/RESULTS.md section: accuracy (with its interval) and the change against the full cache."""
    from results import table, write_section

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
    body = (
        (f"{res['note'].strip()}\n\n" if res.get("note") else "")
        + f"{Path(res['model']).name} on {Path(res['data']).name} ({res['format']}{k}), n = {res['n']} per row, {mode}; "
        f"decoding batch {res.get('batch_size', 1)}; plot: `{res['plot']}`."
        + ("" if res.get("complete", True) else " Incomplete: the run was stopped before every configuration finished.")
        + "\n\n"
        + table(rows, list(rows[0]), "{:.3f}")
    )
    write_section(section, f"KV-cache compression: {section} (issue #3)", body)


if __name__ == "__main__":
    sys.exit(main())
