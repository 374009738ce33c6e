"""Scaled-dot-product attention backends on a GPU: torch's default choice (cuDNN first on Hopper GPUs) against cuDNN
off (flash or memory-efficient attention), on ragcore's own work, where nearly every call has a new shape.

    python -m bench.sdpa_backends --model qwen2.5-0.5b --device cuda --cudnn default --out A.json
    python -m bench.sdpa_backends --model qwen2.5-0.5b --device cuda --cudnn off --out B.json
    python -m bench.sdpa_backends --compare A.json B.json

Run each setting in its own process (torch keeps built attention plans for the process's life). Measured, in this
order: a prefill of ``--lengths`` random token ids, each length twice (the first call meets a new shape, the second
a seen one); ``--steps`` decoding steps after a prompt of ``--decode-tokens`` tokens (each step a new key length);
and ``ragcore eval longctx``'s InfiniRetri on ``--limit`` key-value items of ``--tokens`` tokens (one warm-up item
first, not counted). Times are wall clock after ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.results import write_section
from eval.context_suites import run_longctx
from eval.report import check_out, table, write_json
from ragcore import cache as kvcache
from ragcore.errors import ConfigError, RagcoreError
from ragcore.generator import Generator


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def prefill_ms(lm: Generator, lengths: list[int]) -> list[dict]:
    """Per length, milliseconds of a prefill meeting the shape first, then again."""
    out = []
    gen = torch.Generator().manual_seed(0)
    for n in lengths:
        ids = torch.randint(100, 20000, (1, n), generator=gen).to(lm.model.device)
        times = []
        for _ in range(2):
            _sync()
            t0 = time.perf_counter()
            with torch.inference_mode():
                kvcache.call(
                    lm.model, kvcache.new_cache(lm.model.config), input_ids=ids, use_cache=True, logits_to_keep=1
                )
            _sync()
            times.append(1000 * (time.perf_counter() - t0))
        out.append({"tokens": n, "first_ms": times[0], "again_ms": times[1]})
    return out


def decode_ms(lm: Generator, tokens: int, steps: int) -> dict:
    """Milliseconds per decoding step (one token on the cache) after a prompt of ``tokens`` random token ids."""
    model = lm.model
    ids = torch.randint(100, 20000, (1, tokens), generator=torch.Generator().manual_seed(1)).to(model.device)
    cache = kvcache.new_cache(model.config)
    per = []
    with torch.inference_mode():
        logits = kvcache.call(model, cache, input_ids=ids, use_cache=True, logits_to_keep=1).logits[:, -1]
        for i in range(steps):
            tok = logits.argmax(-1, keepdim=True)
            pos = torch.tensor([[tokens + i]], device=model.device)
            _sync()
            t0 = time.perf_counter()
            logits = kvcache.call(
                model, cache, input_ids=tok, position_ids=pos, cache_position=pos[0], use_cache=True
            ).logits[:, -1]
            _sync()
            per.append(1000 * (time.perf_counter() - t0))
    return {"tokens": tokens, "steps": steps, "median_ms": statistics.median(per), "mean_ms": statistics.fmean(per)}


def load_runs(paths: list[str]) -> list[dict]:
    """The runs ``--out`` wrote, checked to be comparable: the same GPU, torch and measured sizes; one run per model
    and setting. Raises ConfigError naming the file at fault."""
    runs = []
    for p in paths:
        try:
            r = json.loads(Path(p).read_text())
            keys = ("model", "gpu", "torch", "cudnn", "prefill", "decode", "longctx")
            if not isinstance(r, dict) or any(k not in r for k in keys):
                raise ConfigError(
                    f"{p!r} is not a run of python -m bench.sdpa_backends --out (keys: {', '.join(keys)})"
                )
            sizes = _sizes(r)
            _check_fields(r)
        except (OSError, ValueError, KeyError, TypeError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"{p!r} cannot be read as a run: {type(e).__name__}: {e}") from None
        if runs:
            first = runs[0]
            if (r["gpu"], r["torch"]) != (first["gpu"], first["torch"]) or sizes != _sizes(first):
                raise ConfigError(f"{p!r} was measured on another machine or at other sizes than {paths[0]!r}")
        for q in runs:
            if q["model"] == r["model"] and q["longctx"]["method"] != r["longctx"]["method"]:
                raise ConfigError(f"{p!r} timed {r['longctx']['method']!r}; the other run of {r['model']!r} timed "
                                  f"{q['longctx']['method']!r}")  # fmt: skip
        if any((q["model"], q["cudnn"]) == (r["model"], r["cudnn"]) for q in runs):
            raise ConfigError(f"{p!r}: a second {r['cudnn']!r} run of {r['model']!r}")
        runs.append(r)
    return runs


def _check_fields(run: dict) -> None:
    """Raise ValueError unless every figure the table reads is there with its type."""
    num = (int, float)
    ok = (
        isinstance(run["model"], str)
        and run["cudnn"] in ("default", "off")
        and all(isinstance(p[k], num) for p in run["prefill"] for k in ("tokens", "first_ms", "again_ms"))
        and isinstance(run["decode"]["median_ms"], num)
        and isinstance(run["longctx"]["method"], str)
        and all(isinstance(run["longctx"][k], num) for k in ("seconds_per_query", "accuracy"))
    )
    if not ok:
        raise ValueError("a field is missing or of the wrong type")


def _sizes(run: dict) -> tuple:
    """What a run measured, in tokens and counts: its prefill lengths, decoding prompt and steps, eval longctx
    length and items."""
    return (
        [x["tokens"] for x in run["prefill"]],
        run["decode"]["tokens"],
        run["decode"]["steps"],
        run["longctx"]["tokens"],
        run["longctx"]["n"],
        run["longctx"].get("offset"),
    )


def compare_body(runs: list[dict]) -> str:
    """A Markdown table of runs (one per model and setting, as :func:`load_runs` checks them), with each model's
    ``off`` run as a ratio of its ``default`` run (above 1: cuDNN off is faster)."""
    first = runs[0]
    prefill = [f"prefill {p['tokens']}" for p in first["prefill"]]
    rows = [
        {
            "model": r["model"],
            "cudnn": r["cudnn"],
            **{
                f"{c}: first / again (ms)": f"{p['first_ms']:.1f} / {p['again_ms']:.1f}"
                for c, p in zip(prefill, r["prefill"])
            },
            "decode (ms/step, median)": f"{r['decode']['median_ms']:.1f}",
            "longctx method": f"`{r['longctx']['method']}`",
            "longctx (s/query)": f"{r['longctx']['seconds_per_query']:.3f}",
            "accuracy": f"{r['longctx']['accuracy']:.2f}",
        }
        for r in runs
    ]
    lines = [
        f"{first['gpu'] or 'CPU'}, torch {first['torch']}; InfiniRetri (each model's spec in the table) on "
        f"{first['longctx']['n']} key-value items of {first['longctx']['tokens']} tokens after one warm-up item; "
        f"decoding after a prompt of {first['decode']['tokens']} tokens, {first['decode']['steps']} steps; prefill "
        "of random token ids, each length twice (first: a new shape; again: the same shape). Milliseconds and "
        "seconds are wall clock.",
        "",
        table(rows, list(rows[0])),
    ]
    ratios = [
        {
            "model": d["model"],
            **{c: _ratio(a["first_ms"], b["first_ms"]) for c, a, b in zip(prefill, d["prefill"], o["prefill"])},
            "decode step": _ratio(d["decode"]["median_ms"], o["decode"]["median_ms"]),
            "longctx query": _ratio(d["longctx"]["seconds_per_query"], o["longctx"]["seconds_per_query"]),
        }
        for d in runs
        for o in runs
        if d["model"] == o["model"] and (d["cudnn"], o["cudnn"]) == ("default", "off")
    ]
    if ratios:
        lines += ["", "Speedup of cuDNN off (default / off; prefill: first calls, a new shape each):", ""]
        lines.append(table(ratios, list(ratios[0])))
    return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def _check_method(method: str) -> None:
    """Raise a RagcoreError for an ``eval longctx`` method that is no context compressor, ``truncate`` or KV
    compressor spec (before any model loads)."""
    from compress.kv import get_compressor
    from ragcore.registry import registry

    name = method.split("(")[0].split(":")[0].strip()
    if name == "truncate":
        return
    if name in registry("context_compressor"):
        registry("context_compressor").build(method)
    else:
        get_compressor(method)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sdpa_backends", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-0.5b", help="generator name or path (default: qwen2.5-0.5b)")
    ap.add_argument("--device", default="cuda", help="device (default: cuda; cpu runs, but measures no cuDNN)")
    ap.add_argument("--cudnn", choices=("default", "off"), default="default",
                    help="default: torch's choice (cuDNN first on Hopper); off: cuDNN's attention off")  # fmt: skip
    ap.add_argument("--lengths", default="1000,2000,4000,8000", help="prefill lengths in tokens, comma-separated")
    ap.add_argument("--decode-tokens", type=int, default=4096, help="prompt tokens before the decoding steps")
    ap.add_argument("--steps", type=int, default=32, help="decoding steps timed")
    ap.add_argument("--method", default="infiniretri(layer=9, segment=4096)", help="eval longctx method (a spec)")
    ap.add_argument("--tokens", type=int, default=65536, help="eval longctx input length in tokens")
    ap.add_argument("--limit", type=int, default=5, help="eval longctx items timed (after one warm-up item)")
    ap.add_argument("--offset", type=int, default=75, help="eval longctx first item")
    ap.add_argument("--out", help="the run's JSON (its folder is created)")
    ap.add_argument("--compare", nargs="+", metavar="JSON", help="print runs side by side instead of measuring")
    ap.add_argument("--write-results", metavar="SECTION", help="with --compare: write the table to docs/RESULTS.md")
    ap.add_argument("--note", default="", help="with --write-results: a paragraph under the title (where it ran)")
    a = ap.parse_args(argv)
    if a.write_results is not None and (not a.compare or not a.write_results.strip()):
        ap.error("--write-results needs --compare and a section name")
    if a.compare:
        try:
            body = compare_body(load_runs(a.compare))
        except ConfigError as e:
            ap.error(str(e))
        print(body)
        if a.write_results:
            title = "Attention backends on a GPU: torch's default (cuDNN first) against cuDNN off"
            write_section(a.write_results, title, (a.note + "\n\n" if a.note else "") + body)
        return 0
    if not a.out:
        ap.error("--out is required (or --compare)")
    try:
        check_out(a.out)
    except ConfigError as e:
        ap.error(f"--out: {e}")
    if a.offset < 0:
        ap.error(f"--offset must be >= 0, got {a.offset}")
    try:
        _check_method(a.method)
    except RagcoreError as e:
        ap.error(f"--method: {e}")
    try:
        lengths = [int(x) for x in a.lengths.split(",")]
    except ValueError:
        ap.error(f"--lengths {a.lengths!r}: whole numbers separated by commas")
    for name in ("decode_tokens", "steps", "tokens", "limit"):
        if getattr(a, name) < 1 or min(lengths) < 1:
            ap.error(f"--{name.replace('_', '-')} and --lengths must be positive")
    try:
        torch.backends.cuda.enable_cudnn_sdp(a.cudnn == "default")
        lm = Generator(a.model, a.device)
        lm.warm_up()
        torch.backends.cuda.enable_cudnn_sdp(a.cudnn == "default")  # as asked, whatever loading the model chose
        res = {
            "model": a.model,
            "device": str(lm.model.device),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "cudnn": a.cudnn,
            "prefill": prefill_ms(lm, lengths),
            "decode": decode_ms(lm, a.decode_tokens, a.steps),
        }
        run_longctx(lm, None, a.tokens, a.method, limit=1, offset=a.offset + a.limit)  # warm-up item
        lc = run_longctx(lm, None, a.tokens, a.method, limit=a.limit, offset=a.offset)
    except RagcoreError as e:
        ap.error(str(e))
    if lc["n"] < a.limit:
        ap.error(f"--offset {a.offset} --limit {a.limit}: only {lc['n']} items there")
    res["longctx"] = {k: lc[k] for k in ("method", "tokens", "offset", "n", "accuracy", "seconds_per_query")}
    res["longctx"]["seconds"] = [p["seconds"] for p in lc["predictions"]]
    write_json(a.out, res, markdown=False)
    print(json.dumps({k: res[k] for k in ("cudnn", "decode")}), res["longctx"]["seconds_per_query"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
