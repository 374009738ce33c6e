"""Peer runner: NQ-open QA with NVIDIA kvpress (0.5.5) KV-cache compression, on prompts tokenised by ragcore.

Runs under the kvpress venv (``.venv-kvpress/bin/python``) from the repository root; it imports no ragcore module,
only ``eval.metrics``, ``eval.stats`` and ``eval.report`` (standard library only). The input is the JSONL that
``python -m bench.peers.kvpress.prompts`` writes: one row per question with ``context_ids`` (the chat prompt up to the
question), ``question_ids`` (the rest, assistant header included) and the gold ``answers``.

Per row, as kvpress's own ``KVPressTextGenerationPipeline`` does it:

1. prefill the context through the base model (no LM head) into a fresh ``DynamicCache`` inside
   ``with press(model):`` -- the press's forward hooks prune each layer's keys/values during that prefill;
2. feed the question with ``position_ids`` continuing from the ORIGINAL context length (the cache is now
   shorter, so the default positions, which come from the cache length, would be wrong for RoPE);
   ``cache_position`` is left to default (cache length based), which keeps the causal mask right;
3. greedy-decode up to ``--max-new-tokens``, stopping at an eos id.

Usage::

    HF_HUB_OFFLINE=1 .venv-kvpress/bin/python -m bench.peers.kvpress.peer --model FOLDER --input prompts.jsonl \\
        --press snapkv --ratio 0.5 --max-new-tokens 32 --device cpu --out out/kv/snapkv-0.5.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import kvpress  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache  # noqa: E402

from eval.metrics import accuracy  # noqa: E402
from eval.report import dist_version, write_json  # noqa: E402
from eval.stats import mean_ci  # noqa: E402

logger = logging.getLogger("bench.peers.kvpress.peer")

PRESSES = {
    "snapkv": kvpress.SnapKVPress,
    "knorm": kvpress.KnormPress,
    "streaming_llm": kvpress.StreamingLLMPress,
    "expected_attention": kvpress.ExpectedAttentionPress,
    "none": None,
}
if hasattr(kvpress, "KVzipPress"):  # context reconstruction (KVzip); make_press("kvzip") is a KeyError without it
    PRESSES["kvzip"] = kvpress.KVzipPress

# --- running -------------------------------------------------------------------------------------------------


def make_press(name: str, ratio: float):
    cls = PRESSES[name]
    return None if cls is None else cls(compression_ratio=ratio)


def min_context(press) -> int:
    """The shortest context a press accepts (kvpress asserts on shorter ones)."""
    if isinstance(press, kvpress.SnapKVPress):
        return press.window_size + 1
    if isinstance(press, (kvpress.StreamingLLMPress, kvpress.ExpectedAttentionPress)):
        return press.n_sink + 1
    return 1


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def cache_bytes(cache: DynamicCache) -> tuple[int, int]:
    """Bytes held by the cache's keys and values, and its (first layer's) sequence length."""
    total = 0
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            if t is not None:
                total += t.numel() * t.element_size()
    return total, cache.get_seq_length(0)


@torch.inference_mode()
def run_row(model, press, ctx_ids: list[int], q_ids: list[int], eos_ids: set[int], max_new_tokens: int) -> dict:
    dev = model.device
    ctx = torch.tensor([ctx_ids], device=dev)
    q = torch.tensor([q_ids], device=dev)
    n_ctx = ctx.shape[1]
    compressed = press is not None and n_ctx >= min_context(press)
    if press is not None and not compressed:
        logger.warning("context of %d tokens is too short for %s; left uncompressed", n_ctx, type(press).__name__)

    # 1. prefill + compression (the base model only: no LM head over the whole context, as kvpress does)
    sync(dev)
    t0 = time.perf_counter()
    cache = DynamicCache()
    with press(model) if compressed else contextlib.nullcontext():
        model.model(input_ids=ctx, past_key_values=cache, use_cache=True)
    sync(dev)
    t1 = time.perf_counter()
    kv_bytes, kv_len = cache_bytes(cache)

    # 2. the question, at its true positions after the (uncompressed) context
    pos = torch.arange(n_ctx, n_ctx + q.shape[1], device=dev).unsqueeze(0)
    logits = model(input_ids=q, past_key_values=cache, position_ids=pos, use_cache=True, logits_to_keep=1).logits
    logits = logits[0, -1]
    sync(dev)
    t2 = time.perf_counter()

    # 3. greedy decoding
    next_pos = n_ctx + q.shape[1]
    out: list[int] = []
    stopped = "max_new_tokens"
    for step in range(max_new_tokens):
        tok = int(torch.argmax(logits))
        if tok in eos_ids:
            stopped = "eos"
            break
        out.append(tok)
        if step + 1 == max_new_tokens:
            break
        logits = model(
            input_ids=torch.tensor([[tok]], device=dev),
            past_key_values=cache,
            position_ids=torch.tensor([[next_pos + step]], device=dev),
            use_cache=True,
        ).logits[0, -1]
    sync(dev)
    t3 = time.perf_counter()
    return {
        "token_ids": out,
        "stopped": stopped,
        "compressed": compressed,
        "context_tokens": n_ctx,
        "question_tokens": int(q.shape[1]),
        "kv_tokens": kv_len,
        "kv_bytes": kv_bytes,
        "prefill_s": t1 - t0,
        "question_s": t2 - t1,
        "decode_s": t3 - t2,
    }


def read_rows(path: Path, limit: int | None) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            r = json.loads(line)
            for k in ("id", "context_ids", "question_ids", "answers"):
                if k not in r:
                    raise SystemExit(f"{path}: line {i + 1} lacks {k!r}")
            rows.append(r)
    return rows[:limit] if limit else rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face model folder")
    ap.add_argument("--input", required=True, type=Path, help="JSONL from python -m bench.peers.kvpress.prompts")
    ap.add_argument("--press", required=True, choices=sorted(PRESSES))
    ap.add_argument("--ratio", type=float, default=0.5, help="compression ratio: the fraction of context KV pruned")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument(
        "--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on cpu, bf16 on cuda)"
    )
    ap.add_argument("--attn-impl", default="sdpa", help="attention implementation (sdpa; eager also works)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--log-level", default="INFO")
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    ratio = 0.0 if a.press == "none" else a.ratio
    if a.press == "none" and a.ratio:
        logger.info("press 'none': ratio %.2f ignored (recorded as 0)", a.ratio)
    if not 0 <= ratio < 1:
        raise SystemExit(f"--ratio must be in [0, 1), got {ratio}")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")
    dtype = getattr(torch, a.dtype) if a.dtype else (torch.float32 if a.device == "cpu" else torch.bfloat16)

    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation=a.attn_impl)
    model = model.to(a.device).eval()
    logger.info(
        "loaded %s (%s, %s, attn=%s) in %.1fs",
        a.model,
        type(model).__name__,
        dtype,
        model.config._attn_implementation,
        time.perf_counter() - t,
    )
    eos = model.generation_config.eos_token_id
    eos_ids = set([eos] if isinstance(eos, int) else list(eos or []))
    if tok.eos_token_id is not None:
        eos_ids.add(tok.eos_token_id)
    press = make_press(a.press, ratio)
    logger.info("press %s, eos ids %s", press, sorted(eos_ids))

    rows = read_rows(a.input, a.limit)
    if not rows:
        raise SystemExit(f"{a.input}: no rows")
    # warm-up on the first row (not timed nor scored): first-call kernel/alloc costs would skew row 1
    run_row(model, press, rows[0]["context_ids"], rows[0]["question_ids"], eos_ids, 2)

    preds, acc = [], []
    tot = {"prefill_s": 0.0, "question_s": 0.0, "decode_s": 0.0, "kv_bytes": 0, "kv_tokens": 0, "context_tokens": 0}
    n_tok = 0
    n_uncompressed = 0
    for i, r in enumerate(rows):
        res = run_row(model, press, r["context_ids"], r["question_ids"], eos_ids, a.max_new_tokens)
        text = tok.decode(res["token_ids"], skip_special_tokens=True).strip()
        acc.append(accuracy(text, r["answers"]))
        for k in tot:
            tot[k] += res[k]
        n_tok += len(res["token_ids"])
        n_uncompressed += press is not None and not res["compressed"]
        preds.append(
            {
                "id": r["id"],
                "prediction": text,
                "answers": r["answers"],
                "accuracy": acc[-1],
                "stopped": res["stopped"],
                "context_tokens": res["context_tokens"],
                "kv_tokens": res["kv_tokens"],
                "kv_bytes": res["kv_bytes"],
                "prefill_s": round(res["prefill_s"], 5),
                "decode_s": round(res["question_s"] + res["decode_s"], 5),
                "new_tokens": len(res["token_ids"]),
            }
        )
        logger.info(
            "[%d/%d] %s ctx %d -> kv %d tok, prefill %.3fs, %d new tok: %r (acc %d)",
            i + 1,
            len(rows),
            r["id"],
            res["context_tokens"],
            res["kv_tokens"],
            res["prefill_s"],
            len(res["token_ids"]),
            text[:80],
            acc[-1],
        )

    n = len(rows)
    a_mean, ci = mean_ci(acc)
    summary = {
        "press": a.press,
        "ratio": ratio,
        "model": a.model,
        "n": n,
        "accuracy": a_mean,
        "accuracy_ci95": ci,
        "prefill_s": tot["prefill_s"] / n,  # context prefill + compression, mean per question
        "prefill_s_median": statistics.median(x["prefill_s"] for x in preds),  # robust to CPU contention
        "question_s": tot["question_s"] / n,  # feeding the question ids (to the first answer logits)
        "ttft_s": (tot["prefill_s"] + tot["question_s"]) / n,  # comparable to ragcore's whole-prompt prefill_s
        "decode_tok_s": n_tok / tot["decode_s"] if tot["decode_s"] > 0 else 0.0,
        "kv_bytes": tot["kv_bytes"] / n,  # after compression, before the question
        "kv_tokens": tot["kv_tokens"] / n,
        "context_tokens": tot["context_tokens"] / n,
        "n_uncompressed": n_uncompressed,
        "max_new_tokens": a.max_new_tokens,
        "device": a.device,
        "dtype": str(dtype).removeprefix("torch."),
        "attn_implementation": model.config._attn_implementation,
        "versions": {
            "kvpress": getattr(kvpress, "__version__", None) or dist_version("kvpress"),
            "transformers": dist_version("transformers"),
            "torch": torch.__version__,
        },
        "predictions": preds,
    }
    write_json(a.out, summary, markdown=False)
    brief = {k: v for k, v in summary.items() if k != "predictions"}
    sys.stdout.write(json.dumps(brief) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
