"""Seconds per decoding step of a batch on a long cache: transformers' SDPA against ragcore's grouped decoding
(:func:`ragcore.cache.grouped_decode_attention`), eagerly and replayed as a CUDA graph, with and without per-head
masks.

The model is random-initialised with qwen2.5-0.5b's shape (24 layers, 14 query heads in 2 key/value groups,
head size 64; no weights are read), bfloat16 on CUDA and float32 on CPU. Each of ``--batch`` rows gets a cache of
``--tokens`` random keys and values per layer and, with ``--masks head``, a per-layer, per-head visibility that
hides half of the slots at random (what a compressor with head-wise budgets leaves, ``masks_only``); ``none``
leaves every slot visible. The rows then decode together through ``Generator.decode_batch``, the path of
``CompressedContext.ask_batch`` and ``Generator.generate_batch``, for ``--steps`` steps (no tokenizer: no
end-of-sequence stop). Three arms read the same caches and the same first logits: SDPA with eager steps,
grouped decoding with eager steps, grouped decoding with the steps replayed as a CUDA graph
(``Generator.cuda_graphs``). The report gives the wall seconds per step (median of ``--repeats`` runs, the arms
alternating), each grouped arm's speedup over SDPA with its range over the runs, and the largest difference of
the logits after the first step against SDPA's (bfloat16 rounding on a GPU). Grouped decoding runs on the devices
of ``ragcore.cache.GROUPED_DECODE`` (CUDA) and graphs only on CUDA; elsewhere the three arms run the same path::

    python -m bench.decode_step --device cuda --tokens 5000 25000 --json out/decode-step.json
    OMP_NUM_THREADS=2 python -m bench.decode_step --device cpu --batch 4 --tokens 2000 --steps 8

Not a test: it checks nothing. ``--render JSON [JSON ...] --write-results SECTION`` writes a docs/RESULTS.md
section from such files.
"""

from __future__ import annotations

import argparse
import logging
import time
from statistics import median
from typing import Any

import torch

from bench.results import check_outputs, finish, median_ratio, output_args, render_files
from ragcore import cache as kvcache
from ragcore.generator import GenerationConfig, Generator
from ragcore.prompt import Prompt

logger = logging.getLogger("bench.decode_step")

QWEN25_05B = dict(  # qwen2.5-0.5b's shape (Qwen2.5-Coder-0.5B-Instruct's config)
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    rope_theta=1000000.0,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
)
# the arms: (name, attention implementation, CUDA graphs)
ARMS = (
    ("sdpa", "sdpa", False),
    ("grouped", kvcache.ATTN_IMPLEMENTATION, False),
    ("grouped_graph", kvcache.ATTN_IMPLEMENTATION, True),
)


def model(device: str, layers: int) -> Generator:
    """A random-init Qwen2 model of qwen2.5-0.5b's shape (``layers`` layers), as a tokenizer-less Generator."""
    import transformers

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cfg = transformers.Qwen2Config(**{**QWEN25_05B, "num_hidden_layers": layers})
    with torch.device(device):
        m = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    m.config._attn_implementation = "sdpa"
    return Generator.from_model(m, name="random-qwen2.5-0.5b-shape")


def environment(gen: Generator) -> dict[str, str]:
    """Where a run of ``gen`` measures: the device's name, torch's and transformers' versions, the dtype."""
    dev = gen.model.device
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "dtype": str(gen.model.dtype).removeprefix("torch."),
    }


def rows(gen: Generator, batch: int, tokens: int, masks: str, seed: int = 0) -> list[tuple[Any, dict]]:
    """``batch`` single-row caches of ``tokens`` random slots per layer, with per-head visibility (``masks``)."""
    cfg = gen.model.config
    dev, dtype = gen.model.device, gen.model.dtype
    g = torch.Generator(device=dev).manual_seed(seed)
    hkv, d = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    out = []
    for _ in range(batch):
        layers, vis = [], {}
        for li in range(cfg.num_hidden_layers):
            k = torch.randn(1, hkv, tokens, d, generator=g, device=dev, dtype=dtype)
            v = torch.randn(1, hkv, tokens, d, generator=g, device=dev, dtype=dtype)
            layers.append((k, v))
            if masks == "head":
                vis[li] = torch.rand(1, hkv, tokens, generator=g, device=dev) < 0.5
        out.append((kvcache.new_cache(cfg, layers), vis))
    return out


def decode(gen: Generator, batch: int, tokens: int, masks: str, steps: int) -> tuple[float, torch.Tensor]:
    """Wall seconds per step of ``steps`` batched decoding steps, and the logits after the first step."""
    cfg = gen.model.config
    dev = gen.model.device
    prompts = [Prompt("", torch.zeros(1, tokens, dtype=torch.long)) for _ in range(batch)]
    first = [torch.randn(1, cfg.vocab_size, generator=torch.Generator().manual_seed(i)).to(dev) for i in range(batch)]
    seen: list[torch.Tensor] = []
    lm_head = gen.model.get_output_embeddings()
    handle = lm_head.register_forward_hook(lambda m, a, o: seen.append(o[:, -1].float().cpu()) if not seen else None)
    try:
        r = rows(gen, batch, tokens, masks)
        out = gen.decode_batch(prompts, r, first, [{}] * batch, [0.0] * batch, GenerationConfig(max_new_tokens=steps))
    finally:
        handle.remove()
    return max(o.decode_s for o in out) / (steps - 1), seen[0]


def profile(gen: Generator, batch: int, tokens: int, masks: str, steps: int, rows_: int = 12) -> str:
    """torch.profiler's table of ``steps`` decoding steps, the ``rows_`` operations most costly on the device
    (on CPU: in processor time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = gen.model.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=acts) as prof:
        decode(gen, batch, tokens, masks, steps)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows_)


def run(
    device: str,
    batch: int,
    tokens: list[int],
    steps: int,
    layers: int,
    masks: list[str],
    repeats: int = 3,
    profiled: bool = False,
) -> dict[str, Any]:
    gen = model(device, layers)
    res: dict[str, Any] = {
        **environment(gen),
        "batch": batch,
        "steps": steps,
        "repeats": repeats,
        "layers": layers,
        "rows": [],
    }
    decode(gen, batch, min(tokens), masks[0], 3)  # warm-up: kernels load, the allocator grows
    for t in tokens:
        for m in masks:
            per: dict[str, list[float]] = {a[0]: [] for a in ARMS}
            logits = {}
            for _ in range(repeats):  # the arms alternate, so a slow spell of the host hits each of them
                for name, impl, graphs in ARMS:
                    gen.model.config._attn_implementation, gen.cuda_graphs = impl, graphs
                    sec, logits[name] = decode(gen, batch, t, m, steps)
                    per[name].append(sec)
                    logger.info("%d tokens, masks %s, %s: %.2f ms a step", t, m, name, 1e3 * sec)
            diff = {f"{a[0]}_logits_max_abs_diff": float((logits[a[0]] - logits["sdpa"]).abs().max()) for a in ARMS[1:]}
            res["rows"].append({"tokens": t, "masks": m, **{f"{a}_s": v for a, v in per.items()}, **diff})
            if device == "cuda":
                torch.cuda.empty_cache()
    if profiled:  # where each arm's steps go, at the longest context under the first masks
        res["profile"] = {}
        for name, impl, graphs in ARMS:
            gen.model.config._attn_implementation, gen.cuda_graphs = impl, graphs
            res["profile"][name] = profile(gen, batch, max(tokens), masks[0], 4)
    gen.model.config._attn_implementation, gen.cuda_graphs = kvcache.ATTN_IMPLEMENTATION, True
    return res


def render(results: list[dict[str, Any]]) -> str:
    """The Markdown table of one or more runs' results."""
    lines = [
        "| device | dtype | batch | context tokens | per-head masks | runs | SDPA: ms a step | grouped: ms a step "
        "| grouped + CUDA graph: ms a step | speedup, grouped | speedup, grouped + graph "
        "| logits max abs diff (grouped, + graph) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    for r in results:
        for row in r["rows"]:
            a, b, c = row["sdpa_s"], row["grouped_s"], row["grouped_graph_s"]
            lines.append(
                f"| {r['device']} | {r['dtype']} | {r['batch']} | {row['tokens']} | {row['masks']} | {len(a)} "
                f"| {1e3 * median(a):.1f} | {1e3 * median(b):.1f} | {1e3 * median(c):.1f} | {median_ratio(a, b, 'x')} "
                f"| {median_ratio(a, c, 'x')} | {row['grouped_logits_max_abs_diff']:.2g}, "
                f"{row['grouped_graph_logits_max_abs_diff']:.2g} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--tokens", type=int, nargs="+", default=[5000])
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--layers", type=int, default=QWEN25_05B["num_hidden_layers"])
    ap.add_argument("--masks", nargs="+", default=["head", "none"], choices=["head", "none"])
    ap.add_argument("--repeats", type=int, default=3, help="runs of each implementation, alternating")
    ap.add_argument("--profile", action="store_true", help="also torch.profiler's tables (longest context)")
    output_args(ap)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.render:
        return render_files(
            ap, a, render, "Decoding steps on a long cache: transformers' SDPA against grouped decoding"
        )
    if a.steps < 2:
        ap.error(f"--steps must be at least 2, got {a.steps}")
    for name in ("batch", "layers", "repeats"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be at least 1, got {getattr(a, name)}")
    if min(a.tokens) < 1:
        ap.error(f"--tokens must be at least 1 each, got {a.tokens}")
    if a.device not in ("cpu", "cuda") or (a.device == "cuda" and not torch.cuda.is_available()):
        ap.error(f"--device must be cpu or cuda (with a CUDA build of torch and a GPU), got {a.device!r}")
    check_outputs(ap, a)
    t0 = time.perf_counter()
    res = run(a.device, a.batch, a.tokens, a.steps, a.layers, a.masks, a.repeats, a.profile)
    res["wall_s"] = time.perf_counter() - t0
    return finish(a, res, render)


if __name__ == "__main__":
    raise SystemExit(main())
