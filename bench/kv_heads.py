"""Retrieval heads measured on the task: copy scores of every key/value head on NQ-open questions.

A thin driver of :func:`compress.kv.heads.copy_scores` (Wu et al.'s retrieval score; see that module) on questions
outside the slices a headline is chosen and reported on (default: from question 901 on). Writes a head-score file
for ``retrieval_heads(scores='PATH'):snapkv``:

    HF_HUB_OFFLINE=1 python -m bench.kv_heads --model qwen2.5-0.5b --offset 900 --limit 48 \\
        --retrieved out/retrieved.json --out docs/data/kv/heads-nq-qwen2.5-0.5b.json
"""

from __future__ import annotations

import argparse
import logging

import torch

from compress.kv.heads import copy_scores
from eval.kv_compression import load_items, score_answer
from ragcore.generator import Generator

logger = logging.getLogger("bench.kv_heads")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-0.5b")
    p.add_argument("--data", default=None, help="NQ-open file (default: the bundled one)")
    p.add_argument("--offset", type=int, default=900, help="first question (keep clear of the headline slices)")
    p.add_argument("--limit", type=int, default=48)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--retrieved", default=None, help="top k from a `ragcore eval retrieval --dump-retrieved` file")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    gen = Generator(a.model, device=a.device)
    fmt, items = load_items(gen, a.data, a.k, a.limit, retrieved=a.retrieved, offset=a.offset)
    if fmt != "nq":
        raise SystemExit(f"kv_heads: error: needs NQ-open questions, got a {fmt!r} file")
    hs = copy_scores(
        gen,
        [it.prompt for it in items],
        lambda i, g: score_answer("nq", g.text, items[i].answers) >= 1,
        a.max_new_tokens,
        a.batch_size,
    )
    hs.model = a.model
    hs.meta = {
        "questions": f"{a.offset + 1}-{a.offset + len(items)} of {a.data or 'the bundled NQ-open'}, top {a.k}",
        **hs.meta,
    }
    hs.save(a.out)
    top = torch.topk(hs.scores.flatten(), 7).indices.tolist()
    h = hs.scores.shape[1]
    logger.info("best heads (layer, kv head): %s", [(t // h, t % h) for t in top])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
