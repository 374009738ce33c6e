"""GPU figures for issue #3, in one process (run on the lent H100; same code runs on CPU at small sizes):

* ``attention``: peak memory of eager attention (``output_attentions=True``) against ragcore's recomputed
  rows (``ragcore.attention.attention_to_spans``) for one prompt, on a random-initialised model with
  SmolLM2-135M's shape, plus the max abs difference of the two (float32).
* ``kv``: a random-initialised model with Llama-3.1-8B's shape (bf16), a 32k-token context: KV GiB held and
  decode tokens/s at ratios 0, 0.5, 0.75 for three compressors.

    python3 -m bench.gpu_figures --part attention kv --out figures.json          # on the GPU machine
    .venv/bin/python -m bench.gpu_figures --render figures.json --write-results  # here: docs/RESULTS.md

Sections written: ``attention-memory``, ``kv-gpu-8b``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger("bench.gpu_figures")

SMOL = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    rope_theta=100000.0,
    max_position_embeddings=8192,
)
LLAMA8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    rope_theta=500000.0,
    max_position_embeddings=131072,
)


def _model(shape: dict, dtype, device, attn="sdpa"):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(**shape, attn_implementation=attn)
    torch.manual_seed(0)
    with torch.device(device):
        m = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return m.eval()


def part_attention(device: str, tokens: int, rows: int) -> dict:
    import torch

    from ragcore.attention import attention_to_spans

    m = _model(SMOL, torch.float32, device, attn="eager")
    ids = torch.randint(0, SMOL["vocab_size"], (1, tokens), device=device)
    q = (tokens - rows, tokens)

    def peak(fn):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated() - base, time.perf_counter() - t

    with torch.inference_mode():
        eager, eager_b, eager_s = peak(
            lambda: torch.stack([a[0, :, q[0] : q[1]].float().cpu() for a in m(ids, output_attentions=True).attentions])
        )
    m.config._attn_implementation = "sdpa"
    rec, rec_b, rec_s = peak(lambda: attention_to_spans(m, ids, {}, q, reduce_rows=False).tokens)
    return {
        "model": "random-init SmolLM2-135M shape, float32",
        "tokens": tokens,
        "rows": rows,
        "eager_peak_bytes": eager_b,
        "recompute_peak_bytes": rec_b,
        "ratio": rec_b / eager_b,
        "eager_s": eager_s,
        "recompute_s": rec_s,
        "max_abs_err": float((eager - rec).abs().max()),
    }


def part_kv(
    device: str, tokens: int, new_tokens: int, compressors: list[str], ratios: list[float], repeats: int = 3
) -> list[dict]:
    """Each configuration is generated ``repeats`` times (after one warm-up generation at full length);
    prefill_s and decode_tok_s are the medians, every repeat's values are kept."""
    import statistics

    import torch

    from compress.kv import get_compressor
    from ragcore.generator import GenerationConfig, Generator
    from ragcore.prompt import Prompt

    m = _model(LLAMA8B, torch.bfloat16, device)
    g = Generator.from_model(m, name="random-init Llama-3.1-8B shape")
    torch.manual_seed(1)
    ids = torch.randint(0, LLAMA8B["vocab_size"], (1, tokens))
    prompt = Prompt(text="", input_ids=ids, spans={"question": (tokens - 32, tokens)})
    cfg = GenerationConfig(max_new_tokens=new_tokens)
    rows = []
    g.generate(prompt, config=cfg)  # warm-up at full length: kernels, allocator, clocks
    for name in compressors:
        for r in ratios:
            comp = None if r == 0 else get_compressor(name, ratio=r)
            outs = []
            for _ in range(repeats):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                outs.append(g.generate(prompt, config=cfg, compressor=comp))
            out = outs[0]
            rows.append(
                {
                    "compressor": name,
                    "ratio": r,
                    "kv_gib": out.stats["kv_bytes"] / 2**30,
                    "kv_gib_full": out.stats["kv_bytes_full"] / 2**30,
                    "prefill_s": statistics.median(o.prefill_s for o in outs),
                    "decode_tok_s": statistics.median(o.decode_tok_s for o in outs),
                    "prefill_s_all": [o.prefill_s for o in outs],
                    "decode_tok_s_all": [o.decode_tok_s for o in outs],
                    "repeats": repeats,
                    "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                    "masks_only": out.stats["masks_only"],
                    "tokens": tokens,
                }
            )
            logger.info("%s", rows[-1])
    return rows


def render(path: str, write: bool) -> None:
    from bench.results import write_section
    from eval.report import read_json, table

    d = read_json(path)
    gpu = d.get("device", "?")
    if "attention" in d:
        a = d["attention"]
        row = {
            "tokens": a["tokens"],
            "query rows": a["rows"],
            "eager peak MiB": a["eager_peak_bytes"] / 2**20,
            "recomputed peak MiB": a["recompute_peak_bytes"] / 2**20,
            "recomputed / eager": a["ratio"],
            "max abs err": a["max_abs_err"],
        }
        body = f"{a['model']} on {gpu}; peak GPU memory above the weights.\n\n" + table([row], list(row), "{:.4g}")
        print(body)
        if write:
            write_section("attention-memory", "Attention module: memory against eager (issue #3)", body, d["command"])
    if "kv" in d:
        cols = ["compressor", "ratio", "kv_gib", "kv_gib_full", "prefill_s", "decode_tok_s", "peak_gib"]
        body = (
            f"Random-initialised model with Llama-3.1-8B's shape (bf16) on {gpu}, {d['kv'][0]['tokens']} context "
            f"tokens, batch 1, greedy decoding of {d['new_tokens']} tokens, question-agnostic compression of the "
            "context before the last 32 tokens"
            + (
                f"; prefill_s and decode_tok_s are medians of {d['kv'][0]['repeats']} runs after a warm-up"
                if "repeats" in d["kv"][0]
                else ""
            )
            + ".\n\n"
            + table(d["kv"], cols, "{:.3f}")
        )
        print(body)
        if write:
            write_section(
                "kv-gpu-8b", "KV compression at 32k tokens on an 8B-shaped model (issue #3)", body, d["command"]
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--part", nargs="*", default=[], choices=["attention", "kv"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--attn-tokens", type=int, default=4096)
    ap.add_argument("--attn-rows", type=int, default=32)
    ap.add_argument("--kv-tokens", type=int, default=32768)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--compressors", nargs="*", default=["snapkv", "streaming_llm", "knorm"])
    ap.add_argument("--ratios", nargs="*", type=float, default=[0.0, 0.5, 0.75])
    ap.add_argument("--repeats", type=int, default=3, help="kv: generations per configuration (medians reported)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--render", default=None, help="render a JSON written by a run into tables")
    ap.add_argument("--write-results", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.render:
        render(a.render, a.write_results)
        return
    import torch

    res: dict = {
        "command": "python3 -m bench.gpu_figures " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "new_tokens": a.new_tokens,
    }
    if "attention" in a.part:
        res["attention"] = part_attention(a.device, a.attn_tokens, a.attn_rows)
        logger.info("%s", res["attention"])
    if "kv" in a.part:
        res["kv"] = part_kv(a.device, a.kv_tokens, a.new_tokens, a.compressors, a.ratios, a.repeats)
    text = json.dumps(res, indent=1)
    if a.out:
        Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
