"""Seconds to prefill a long context under a KV compressor, against a plain prefill: what compressing a context
once costs (``CompressedContext``'s one-off price) before any question is asked.

The model is random-initialised with qwen2.5-0.5b's shape (``bench.decode_step.model``; no weights are read),
bfloat16 on CUDA and float32 on CPU; the context is ``--tokens`` random token ids. Each spec of ``--specs``
prefills the same ids into a fresh cache through ``compressor.apply`` (the path of
``ragcore.context_cache.prefill_context``; ``none`` is the plain prefill), ``--repeats`` times, the specs
alternating. Without a tokenizer, KVzip's reconstruction is the context alone (no instruction), as long as the
real one up to the instruction's few tokens. Compressors that need a fitted file for the model (KVzap) do not
run on a random model. The report gives the median wall seconds and each spec's cost in plain prefills::

    python -m bench.compress_cost --device cuda --tokens 5000 25000 --json out/compress-cost.json --profile
    OMP_NUM_THREADS=2 python -m bench.compress_cost --device cpu --tokens 2000 --layers 4

Not a test: it checks nothing. ``--render JSON [JSON ...] --write-results SECTION`` writes a docs/RESULTS.md
section from such files, a row per file, spec and length (the ``run`` column: the file's name).
"""

from __future__ import annotations

import argparse
import logging
import time
from statistics import median
from typing import Any

import torch

from bench.decode_step import QWEN25_05B, environment, model
from bench.results import check_outputs, finish, median_ratio, output_args, render_files
from compress.kv import DEFAULT_AGNOSTIC
from ragcore import cache as kvcache
from ragcore.errors import ConfigError
from ragcore.generator import Generator
from ragcore.registry import registry

logger = logging.getLogger("bench.compress_cost")


def prefill(gen: Generator, ids: torch.Tensor, spec: str, ratio: float) -> float:
    """Wall seconds of one prefill of ``ids`` under ``spec`` (``none``: no compressor)."""
    m = gen.model
    base = getattr(m, m.base_model_prefix, m)
    cache = kvcache.new_cache(m.config)
    comp = None if spec == "none" else registry("kv_compressor").build(spec, ratio=ratio)
    sync = torch.cuda.synchronize if ids.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        if comp is None:
            kvcache.call(base, cache, input_ids=ids, use_cache=True)
        else:
            with comp.apply(m, cache) as _:
                kvcache.call(base, cache, input_ids=ids, use_cache=True)
    sync()
    return time.perf_counter() - t0


def profile(gen: Generator, ids: torch.Tensor, spec: str, ratio: float, by: str = "device", rows_: int = 15) -> str:
    """torch.profiler's table of one prefill under ``spec``: the ``rows_`` operations most costly on the device
    (``by="device"``; on CPU: in processor time) or in the host's time (``"host"``: where launching the
    operations goes, with their counts)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = ids.device.type == "cuda"
    with torch_profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        prefill(gen, ids, spec, ratio)
    key = "self_cuda_time_total" if cuda and by == "device" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows_)


def run(
    device: str, tokens: list[int], specs: list[str], ratio: float, layers: int, repeats: int, profiled: str | None
) -> dict[str, Any]:
    gen = model(device, layers)
    res: dict[str, Any] = {**environment(gen), "layers": layers, "ratio": ratio, "repeats": repeats, "rows": []}
    g = torch.Generator().manual_seed(0)
    for t in tokens:
        ids = torch.randint(0, QWEN25_05B["vocab_size"], (1, t), generator=g).to(gen.model.device)
        for spec in specs:  # warm-up: kernels load, the allocator grows
            prefill(gen, ids[:, : min(t, 512)], spec, ratio)
        per: dict[str, list[float]] = {s: [] for s in specs}
        for _ in range(repeats):  # the specs alternate, so a slow spell of the host hits each of them
            for spec in specs:
                per[spec].append(prefill(gen, ids, spec, ratio))
                logger.info("%d tokens, %s: %.3f s", t, spec, per[spec][-1])
        res["rows"].append({"tokens": t, "seconds": per})
        if profiled and t == max(tokens):
            res["profile"] = {s: profile(gen, ids, s, ratio, profiled) for s in specs}
        if device == "cuda":
            torch.cuda.empty_cache()
    return res


def render(results: list[dict[str, Any]]) -> str:
    """The Markdown table of one or more runs' results: median seconds, and the cost in plain prefills (the
    ratio of medians, with its range over the runs) where the run has ``none``."""
    lines = [
        "| run | device | dtype | layers | context tokens | compressor | runs | seconds (median) "
        "| plain prefills (range) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for row in r["rows"]:
            plain = row["seconds"].get("none")
            for spec, secs in row["seconds"].items():
                cost = median_ratio(secs, plain) if plain else "-"
                lines.append(
                    f"| {r.get('run', '-')} | {r['device']} | {r['dtype']} | {r['layers']} | {row['tokens']} "
                    f"| `{spec}` | {len(secs)} | {median(secs):.3f} | {cost} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--tokens", type=int, nargs="+", default=[5000])
    ap.add_argument("--specs", nargs="+", default=["none", "kvzip", DEFAULT_AGNOSTIC])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--layers", type=int, default=QWEN25_05B["num_hidden_layers"])
    ap.add_argument("--repeats", type=int, default=3, help="runs of each spec, alternating")
    ap.add_argument(
        "--profile",
        nargs="?",
        const="device",
        choices=["device", "host"],
        help="also torch.profiler's tables (longest context), by device time (default) or host time",
    )
    output_args(ap)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.render:
        return render_files(ap, a, render, "Compressing a context once: prefill seconds under a KV compressor")
    for name in ("layers", "repeats"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be at least 1, got {getattr(a, name)}")
    if min(a.tokens) < 2:
        ap.error(f"--tokens must be at least 2 each, got {a.tokens}")
    if not 0 < a.ratio < 1:
        ap.error(f"--ratio must be in (0, 1), got {a.ratio}")
    if a.device not in ("cpu", "cuda") or (a.device == "cuda" and not torch.cuda.is_available()):
        ap.error(f"--device must be cpu or cuda (with a CUDA build of torch and a GPU), got {a.device!r}")
    if len(set(a.specs)) < len(a.specs):
        ap.error(f"--specs names a spec twice: {a.specs}")
    for spec in a.specs:  # a bad spec fails here, before the model loads
        try:
            if spec != "none":
                registry("kv_compressor").build(spec, ratio=a.ratio)
        except ConfigError as e:
            ap.error(f"--specs: {e}")
    check_outputs(ap, a)
    t0 = time.perf_counter()
    res = run(a.device, a.tokens, a.specs, a.ratio, a.layers, a.repeats, a.profile)
    res["wall_s"] = time.perf_counter() - t0
    return finish(a, res, render)


if __name__ == "__main__":
    raise SystemExit(main())
