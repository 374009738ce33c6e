"""Write NQ-open prompts, tokenised by ragcore's prompt builder, as JSONL for the kvpress peer runner.

Runs under ragcore's own venv. Each row: ``{"id", "context_ids", "question_ids", "answers"}``, where the prompt's
token ids are split at the start of the question span: context = system turn + passages (what a KV press
compresses), question = "Question: ...\\nAnswer:" plus the chat template's closing and assistant header.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.peers.kvpress.prompts --model smollm2-135m --setting oracle --limit 100 \\
        --out out/kv/prompts-smollm2-oracle.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from eval.datasets import NQ_OPEN, load_nq_open  # noqa: E402
from eval.runner import corpus_retriever  # noqa: E402
from ragcore.models import load_generator, resolve  # noqa: E402
from ragcore.prompt import build_prompt  # noqa: E402

logger = logging.getLogger("bench.peers.kvpress.prompts")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="NQ-open JSONL(.gz) (default: the bundled oracle dev set)")
    ap.add_argument("--model", default="smollm2-135m", help="ragcore generator name (its tokenizer is used)")
    ap.add_argument("--setting", choices=("oracle", "top5"), default="oracle")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    ds = load_nq_open(a.data)
    exs = ds.examples[: a.limit] if a.limit else ds.examples
    model, tok = load_generator(a.model, device="cpu")
    del model  # only the tokenizer is needed
    folder = resolve(a.model, "generator")
    logger.info("tokenizer of %s (HF folder for the peer: %s)", a.model, folder)
    by_id = ds.by_id()
    retr = corpus_retriever(ds, Path(a.data) if a.data else NQ_OPEN) if a.setting == "top5" else None

    a.out.parent.mkdir(parents=True, exist_ok=True)
    n_ctx = n_q = 0
    with open(a.out, "w", encoding="utf-8") as f:
        for ex in exs:
            passages = [by_id[i] for i in sorted(ex.gold_ids)] if retr is None else retr.search(ex.question, 5)
            prompt = build_prompt(tok, ex.question, passages)
            ids = prompt.input_ids[0].tolist()
            cut = prompt.spans["question"][0]
            row = {"id": ex.id, "context_ids": ids[:cut], "question_ids": ids[cut:], "answers": ex.answers}
            n_ctx += cut
            n_q += len(ids) - cut
            f.write(json.dumps(row) + "\n")
    logger.info(
        "wrote %d rows to %s (mean context %.0f tokens, question %.0f tokens)",
        len(exs),
        a.out,
        n_ctx / len(exs),
        n_q / len(exs),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
