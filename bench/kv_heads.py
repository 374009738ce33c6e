"""Retrieval heads measured on the task: which key/value heads copy the answer out of the passages.

RazorAttention's calibration (``compress/kv/razor.py``) finds induction and copying heads on a random token
sequence repeated twice. This script measures the same thing on real questions, as Wu et al. (2024, "Retrieval
head mechanistically explains long-context factuality") score retrieval heads: the model answers NQ-open
questions with the full cache; on the answers it got right, each answer token's query row (the position that
produced it) is read through ``ragcore.attention``, and a head's score is the attention mass that row puts on the
passage tokens equal to the token being produced, averaged over such rows and questions, then over each key/value
group. The questions must lie outside the slices a headline is chosen and reported on (default: from question 901
on).

Writes JSON ``{"model", "questions", "rows", "scores": [[layer 0 kv heads], ...]}`` for
``retrieval(scores='PATH'):snapkv``, which boosts the ``top_frac`` best-scoring heads:

    HF_HUB_OFFLINE=1 python -m bench.kv_heads --model qwen2.5-0.5b --offset 900 --limit 48 \\
        --retrieved out/retrieved.json --out docs/data/kv/heads-nq-qwen2.5-0.5b.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from compress.kv.base import group_mean
from eval.kv_compression import load_items, score_answer
from ragcore.attention import attention_to_spans, decoder_layers, head_counts
from ragcore.generator import GenerationConfig, Generator

logger = logging.getLogger("bench.kv_heads")


@torch.inference_mode()
def copy_scores(gen: Generator, items: list, max_new_tokens: int, batch_size: int) -> tuple[torch.Tensor, int, int]:
    """(L, H_kv) copy scores, the questions answered right, and the answer rows that counted."""
    model = gen.model
    total, rows_used, right = None, 0, 0
    cfg = GenerationConfig(max_new_tokens=max_new_tokens)
    for s in range(0, len(items), batch_size):
        chunk = items[s : s + batch_size]
        for it, g in zip(chunk, gen.generate_batch([it.prompt for it in chunk], config=cfg)):
            ans = [t for t in g.token_ids if t not in gen.eos_ids]
            if not ans or score_answer("nq", g.text, it.answers) < 1:
                continue
            right += 1
            prompt = it.prompt.input_ids[0].cpu()
            n = prompt.numel()
            ids = torch.cat([prompt, torch.tensor(ans)])[None]
            att = attention_to_spans(model, ids, rows=(n - 1, n - 1 + len(ans)), reduce_rows=False).tokens.float()
            att = att[..., :n].cpu()  # (L, H, R, n): what each producing row reads in the prompt
            for i, tok in enumerate(ans):
                where = prompt == tok
                if not bool(where.any()):
                    continue  # a token the passages do not hold cannot be copied
                mass = att[:, :, i, where].sum(-1)  # (L, H)
                total = mass if total is None else total + mass
                rows_used += 1
    if total is None:
        raise SystemExit("kv_heads: error: no answer token was found in its prompt; use more questions")
    n_kv = head_counts(decoder_layers(model)[0].self_attn)[1]
    per_kv = group_mean((total / rows_used).T[None], n_kv)[0].T  # (L, H) -> (L, H_kv): mean over each group
    if tuple(per_kv.shape) != (total.shape[0], n_kv):
        raise RuntimeError(f"kv_heads: scores of shape {tuple(per_kv.shape)}, expected {(total.shape[0], n_kv)}")
    return per_kv, right, rows_used


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
    scores, right, rows = copy_scores(gen, items, a.max_new_tokens, a.batch_size)
    out = {
        "model": a.model,
        "questions": f"{a.offset + 1}-{a.offset + len(items)} of {a.data or 'the bundled NQ-open'}, top {a.k}",
        "answered_right": right,
        "rows": rows,
        "scores": [[round(float(x), 6) for x in layer] for layer in scores],
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    top = torch.topk(scores.flatten(), 7).indices.tolist()
    h = scores.shape[1]
    logger.info("%d of %d right, %d rows; best heads %s", right, len(items), rows, [(t // h, t % h) for t in top])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
