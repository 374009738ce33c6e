"""Where the time of the reusable compressed context goes, and how many tensor operations each part dispatches
(each a kernel launch or more on a GPU, where a small model's per-step cost is bound by launches).

One context (a key-value retrieval row's records, ``--tokens`` long) is prefilled and compressed once
(``Generator.prefill_context``, kvzip by default) and asked questions; the parts are: the plain prefill of the
context, the prefill under compression split into KVzip's reconstruction scoring and the rest (selection and
pruning), the question fed on the compressed cache, and one decode step on the compressed cache against one on a
plain full cache (``Generator.generate`` without compression); then ``--questions`` answers one by one
(``CompressedContext.ask``), decoded together (``CompressedContext.ask_batch``) and from full prefills. Operations are counted with a torch dispatch mode;
times are wall and processor seconds of this process (run it with ``OMP_NUM_THREADS=1`` on a shared machine).

``--model tiny`` is a random-init Qwen2-architecture model (``--layers`` layers, hidden size 64) with SmolLM2's
tokenizer: per-layer and per-step overhead dominates its compute, as a small model's does on a GPU::

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python -m bench.kv_reuse_overhead --model tiny --tokens 2500
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python -m bench.kv_reuse_overhead --model smollm2-135m --tokens 2500
    HF_HUB_OFFLINE=1 python -m bench.kv_reuse_overhead --model qwen2.5-0.5b --tokens 5000 --device cuda --profile

Prints a table and, with ``--json PATH``, writes the numbers there. Not a test: it checks nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.kv_op_count import OpCount
from compress.kv import get_compressor
from eval.context_suites import KV_DEFAULT
from eval.datasets import read_jsonl
from eval.kv_reuse import kv_contexts
from ragcore.generator import GenerationConfig, Generator
from ragcore.models import load_generator

logger = logging.getLogger("bench.kv_reuse_overhead")


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def measure(fn: Callable[[], Any], count: bool = True) -> tuple[Any, float, float, int]:
    """``fn()``'s result, wall seconds, processor seconds and (if ``count``) operations dispatched (on a GPU,
    the device is synchronised before and after)."""
    c = OpCount()
    _sync()
    t0, p0 = time.perf_counter(), time.process_time()
    if count:
        with c:
            out = fn()
    else:
        out = fn()
    _sync()
    return out, time.perf_counter() - t0, time.process_time() - p0, c.n


def profile(fn: Callable[[], Any], rows: int = 25) -> str:
    """torch.profiler's table of ``fn()``'s operations (processor and, on a GPU, device time), the ``rows`` most
    costly by processor time spent in the operation itself."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=acts) as prof:
        fn()
        _sync()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def tiny_qwen2(layers: int, vocab: int) -> torch.nn.Module:
    """A random-init Qwen2 decoder: hidden 64, 4 query heads in 2 key/value groups, seeded."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=8192,
    )
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    model.config._attn_implementation = "sdpa"
    return model


def run(
    gen: Generator,
    tokens: int,
    steps: int,
    spec: str,
    ratio: float,
    questions: int,
    profiled: bool = False,
    ops: bool = True,
) -> dict[str, Any]:
    rows = read_jsonl(KV_DEFAULT)
    ctx_spec = kv_contexts(gen, rows[:1], questions, tokens)[0]
    question = ctx_spec.questions[0][0]
    passages, system = ctx_spec.passages, ctx_spec.system
    out: dict[str, Any] = {}

    def row(name: str, wall: float, cpu: float, ops: int) -> None:
        out[name] = {"wall_s": wall, "cpu_s": cpu, "ops": ops}

    gen.prefill_context(passages, "none", system)  # warm-up: first calls allocate and load kernels
    _, w, c, n = measure(lambda: gen.prefill_context(passages, "none", system))
    row("prefill (no compression)", w, c, n)

    comp = get_compressor(spec, ratio=ratio)
    scoring: dict[str, float] = {}
    inner = comp.reconstruction_scores

    def timed(*a: Any) -> Any:
        t0, p0 = time.perf_counter(), time.process_time()
        r = inner(*a)
        scoring["wall_s"], scoring["cpu_s"] = time.perf_counter() - t0, time.process_time() - p0
        return r

    object.__setattr__(comp, "reconstruction_scores", timed)
    ctx, w, c, _ = measure(lambda: gen.prefill_context(passages, comp, system), count=False)
    sc_ops = OpCount()
    object.__setattr__(comp, "reconstruction_scores", lambda *a: _counted(sc_ops, inner, *a))
    _, _, _, n = measure(lambda: gen.prefill_context(passages, comp, system))
    row("prefill + compression (total)", w, c, n)
    row("  of which kvzip scoring", scoring["wall_s"], scoring["cpu_s"], sc_ops.n)
    out["context_tokens"] = ctx.context_tokens
    out["report"] = {k: v for k, v in ctx.report.items() if k in ("masks_only", "kv_bytes_before", "kv_bytes_after")}

    one = GenerationConfig(max_new_tokens=1)
    many = GenerationConfig(max_new_tokens=steps + 1)
    ctx.ask(question, one)
    a1, w1, c1, n1 = measure(lambda: ctx.ask(question, one))
    row("ask: cache set-up + question", w1, c1, n1)
    row("  of which question feed (timed inside)", a1.prefill_s, float("nan"), 0)
    an, wn, cn, nn = measure(lambda: ctx.ask(question, many))
    k = len(an.token_ids) - 1
    row("ask: one decode step (compressed)", (wn - w1) / k, (cn - c1) / k, round((nn - n1) / k))

    prompt = ctx.prompt(question)
    f1, w1, c1, n1 = measure(lambda: gen.generate(prompt, config=one))
    fn_, wn, cn, nn = measure(lambda: gen.generate(prompt, config=many))
    k = len(fn_.token_ids) - 1
    row("full: prefill of the whole prompt", w1, c1, n1)
    row("full: one decode step", (wn - w1) / k, (cn - c1) / k, round((nn - n1) / k))
    out["steps"] = k

    qs = [q for q, _ in ctx_spec.questions]
    prompts = [ctx.prompt(q) for q in qs]
    # the many-answers rows: operation counting (a dispatch mode) slows each operation, so --no-ops times them bare
    _, w, c, n = measure(lambda: [ctx.ask(q, many) for q in qs], ops)
    row(f"{len(qs)} answers, ask one by one", w, c, n)
    _, w, c, n = measure(lambda: ctx.ask_batch(qs, many), ops)
    row(f"{len(qs)} answers, ask_batch", w, c, n)
    _, w, c, n = measure(lambda: [gen.generate(p, config=many) for p in prompts], ops)
    row(f"{len(qs)} full prefills + answers", w, c, n)
    _, w, c, n = measure(lambda: gen.generate_batch(prompts, many), ops)
    row(f"{len(qs)} full prefills + answers, generate_batch", w, c, n)
    if profiled:  # where the time of one answer goes, each way
        out["profile_ask"] = profile(lambda: ctx.ask(question, many))
        out["profile_full"] = profile(lambda: gen.generate(prompt, config=many))
    return out


def _counted(c: OpCount, fn: Callable[..., Any], *a: Any) -> Any:
    with c:
        return fn(*a)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="'tiny' (random-init Qwen2) or a generator name")
    ap.add_argument("--layers", type=int, default=24, help="tiny model's layers (qwen2.5-0.5b has 24)")
    ap.add_argument("--tokens", type=int, default=2500)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--questions", type=int, default=10, help="questions of the many-answers parts")
    ap.add_argument("--compressor", default="kvzip")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--profile", action="store_true", help="also torch.profiler's tables of one answer, each way")
    ap.add_argument("--no-ops", action="store_true", help="time the many-answers rows without counting operations")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    if a.model == "tiny":
        _, tok = load_generator("smollm2-135m", "cpu")
        gen = Generator.from_model(tiny_qwen2(a.layers, len(tok)).to(a.device), tok, name="tiny-qwen2")
    else:
        gen = Generator(a.model, device=a.device)
        gen.warm_up()
    res = run(gen, a.tokens, a.steps, a.compressor, a.ratio, a.questions, a.profile, not a.no_ops)
    lines = [f"{a.model}, {res['context_tokens']} context tokens, {a.compressor} ratio {a.ratio}, torch threads "
             f"{torch.get_num_threads()}", f"{'part':42s} {'wall ms':>9s} {'cpu ms':>9s} {'ops':>8s}"]  # fmt: skip
    for name, v in res.items():
        if isinstance(v, dict) and "ops" in v:
            lines.append(f"{name:42s} {1e3 * v['wall_s']:9.1f} {1e3 * v['cpu_s']:9.1f} {v['ops']:8d}")
    lines += [f"\n{k}:\n{v}" for k, v in res.items() if k.startswith("profile_")]
    logger.info("%s", "\n".join(lines))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"model": a.model, "args": vars(a), **res}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
