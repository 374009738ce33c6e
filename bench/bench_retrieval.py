"""Retrieval speed on the NQ-open corpus, in one run: BM25 queries/s with bm25s vs rank-bm25 (same tokens,
same corpus), dense query latency, index build throughput and index load time.

    .venv/bin/python -m bench.bench_retrieval [--data FILE] [--queries N] [--write-results]   # retrieval-speed
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

import numpy as np

from bench.results import write_section
from eval.datasets import load_nq_open
from eval.report import table
from retrieval.bm25 import BM25Index, tokenize
from retrieval.hybrid import HybridRetriever

logger = logging.getLogger("bench.bench_retrieval")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=None)
    ap.add_argument("--queries", type=int, default=300, help="queries timed per method")
    ap.add_argument("--write-results", action="store_true", help="update docs/RESULTS.md")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ds = load_nq_open(a.data)
    texts = [c.text for c in ds.corpus]
    qs = [e.question for e in ds.examples[: a.queries]]
    rows = []

    # BM25: the retriever's own path (bm25s sparse scores + top-k) against rank-bm25 on identical tokens
    from rank_bm25 import BM25Okapi

    bm = BM25Index()
    t = time.perf_counter()
    bm.build(texts)
    bm_build = time.perf_counter() - t
    ref = BM25Okapi([tokenize(x) for x in texts])
    t = time.perf_counter()
    for q in qs:
        bm.search(q, 10)
    qps_bm25s = len(qs) / (time.perf_counter() - t)
    t = time.perf_counter()
    for q in qs:
        np.argsort(-ref.get_scores(tokenize(q)))[:10]
    qps_rank = len(qs) / (time.perf_counter() - t)

    # full hybrid index build (embedding dominates), save, load
    r = HybridRetriever()
    r.warm_up()
    t = time.perf_counter()
    r.add(ds.corpus)
    build_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as d:
        r.save(d)
        t = time.perf_counter()
        HybridRetriever.load(d)
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        HybridRetriever.load(d, verify=False)
        load_noverify_s = time.perf_counter() - t

    lat = {}
    for mode in ("dense", "hybrid"):
        times = []
        for q in qs[:100]:
            t = time.perf_counter()
            r.search(q, 10, mode)
            times.append(time.perf_counter() - t)
        lat[mode] = (statistics.median(times) * 1e3, float(np.percentile(times, 95)) * 1e3)

    rows = [
        {"measure": "BM25 queries/s, bm25s (ragcore BM25Index)", "value": f"{qps_bm25s:.0f}"},
        {"measure": "BM25 queries/s, rank-bm25 BM25Okapi", "value": f"{qps_rank:.1f}"},
        {"measure": "bm25s speed-up over rank-bm25", "value": f"{qps_bm25s / qps_rank:.0f}x"},
        {"measure": "BM25 index build (bm25s), passages/s", "value": f"{len(texts) / bm_build:.0f}"},
        {
            "measure": "dense query latency, median / p95 (ms, embed + FAISS flat)",
            "value": f"{lat['dense'][0]:.1f} / {lat['dense'][1]:.1f}",
        },
        {
            "measure": "hybrid query latency, median / p95 (ms)",
            "value": f"{lat['hybrid'][0]:.1f} / {lat['hybrid'][1]:.1f}",
        },
        {"measure": "hybrid index build (MiniLM + FAISS + bm25s), passages/s", "value": f"{len(texts) / build_s:.1f}"},
        {"measure": "index load time with sha256 verification (s)", "value": f"{load_s:.3f}"},
        {"measure": "index load time without verification (s)", "value": f"{load_noverify_s:.3f}"},
    ]
    body = (
        f"Corpus: {len(texts)} NQ-open passages; {len(qs)} queries timed per BM25 method, 100 per latency figure; "
        "CPU (2 cores), one process, one run.\n\n" + table(rows, ["measure", "value"])
    )
    print(body)
    if a.write_results:
        write_section("retrieval-speed", "Retrieval speed (issue #2)", body)


if __name__ == "__main__":
    main()
