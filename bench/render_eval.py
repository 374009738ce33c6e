"""Render JSON files written by ``ragcore eval retrieval|qa --out`` into docs/RESULTS.md sections.

Sections ``eval-retrieval`` and ``eval-qa``:

    .venv/bin/python -m bench.render_eval retrieval out/retrieval.json --command "ragcore eval retrieval --out ..."
    .venv/bin/python -m bench.render_eval qa out/qa/*.json --command "bench/qa_matrix.sh ..."
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.results import write_section
from eval.report import read_json, table


def retrieval(path: Path) -> str:
    d = read_json(path)
    rows = [{"retriever": k, **v} for k, v in d.items()]
    cols = ["retriever", "recall@1", "recall@5", "recall@20", "mrr", "ndcg@10", "n"]
    best = {k: max(d["bm25"][k], d["dense"][k]) for k in ("recall@1", "recall@5", "recall@20")}
    ok = all(d["hybrid"][k] >= v for k, v in best.items())
    verdict = (
        f"Hybrid >= the better of BM25 and dense at k = 1, 5, 20: **{'yes' if ok else 'no'}**; "
        f"hybrid recall@1 {d['hybrid']['recall@1']:.4f} (target >= 0.90), recall@5 {d['hybrid']['recall@5']:.4f} "
        "(target >= 0.985)."
    )
    return "NQ-open, corpus = all gold passages of the split (deduplicated).\n\n" + table(rows, cols) + "\n\n" + verdict


def qa(paths: list[Path]) -> str:
    rows = []
    for p in paths:
        d = read_json(p)
        model = Path(d["model"]).name.removesuffix(".gguf")
        rows.append(
            {
                "model": model,
                "setting": d["setting"],
                "n": d["n"],
                "accuracy": f"{d['accuracy']:.3f} ± {d['accuracy_ci95']:.3f}",
                "em": d["em"],
                "f1": d["f1"],
                "prompt tokens": f"{d['mean_prompt_tokens']:.0f}",
                "s/question": f"{d['seconds_per_question']:.2f}",
                "device": d.get("device", "cuda (H100)" if d["model"].startswith("/var/tmp") else "?"),
            }
        )
    order = {"closed": 0, "oracle": 1, "top5": 2, "top10": 3}
    rows.sort(key=lambda r: (r["model"], order.get(r["setting"], 9)))
    cols = ["model", "setting", "n", "accuracy", "em", "f1", "prompt tokens", "s/question", "device"]
    return (
        "NQ-open; accuracy = a normalised gold answer is contained in the normalised prediction (± 95% interval); "
        "greedy decoding, at most 32 new tokens; top5 = the hybrid retriever's top 5 from the split's own corpus. s/question is wall time; the CPU rows ran "
        "beside other jobs on a 2-core machine, so their speed is not a benchmark.\n\n" + table(rows, cols, "{:.3f}")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("suite", choices=["retrieval", "qa"])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--command", required=True, help="the command that produced the JSON files")
    a = ap.parse_args()
    if a.suite == "retrieval":
        body, title = retrieval(a.files[0]), "Retrieval quality on NQ-open (issue #2)"
    else:
        body, title = qa(a.files), "QA accuracy of the bundled generators on NQ-open (issue #2)"
    print(body)
    write_section(f"eval-{a.suite}", title, body, a.command)


if __name__ == "__main__":
    main()
