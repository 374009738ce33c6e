"""Where the time of one InfiniRetri query goes: sentence splitting, per window the prompt, the tokenization with
offsets and the attention read (the decoder up to the read layer), and the answer's generation.

The items are those of ``ragcore eval longctx`` (key-value retrieval, ``--tokens`` long). Each query runs twice:
once plainly (wall seconds: compression and answer), once under cProfile, whose cumulative seconds per part are
scaled to the plain run's total (cProfile slows Python-heavy parts more than tensor work, so the shares are
approximate). Not a test: it checks nothing::

    HF_HUB_OFFLINE=1 python -m bench.infiniretri_profile --model qwen2.5-0.5b --tokens 65536 --limit 3 \\
        --method "infiniretri(layer=9)" --device cuda --json out/infiniretri-profile.json
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import pstats
import time
from pathlib import Path
from typing import Any

import torch

from eval.context_suites import longctx_items
from ragcore.generator import GenerationConfig, Generator
from ragcore.registry import registry
from ragcore.types import Chunk, ScoredChunk

logger = logging.getLogger("bench.infiniretri_profile")

# (part, file suffix, function name) read from the profile's cumulative times
PARTS = [
    ("sentence split (pysbd)", "ragcore/sentences.py", "split_sentences"),
    ("sentences + token counts", "compress/context/infiniretri.py", "sentences_of"),
    ("windows (all steps)", "compress/context/infiniretri.py", "_step"),
    ("  window prompts", "ragcore/generator.py", "prompt"),
    ("  attention read (decoder to the layer)", "compress/context/infiniretri.py", "token_scores"),
    ("answer generation", "ragcore/generator.py", "generate"),
]


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def query(lm: Generator, stage: Any, it: dict[str, Any], cfg: GenerationConfig) -> tuple[str, int]:
    kept = stage.compress(it["question"], [ScoredChunk(Chunk(it["text"], "input"))], lm)
    prompt = lm.prompt(it["question"], kept, system=it["system"])
    g = lm.generate(prompt, config=cfg)
    _sync()
    return g.text, len(prompt)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--limit", type=int, default=2)
    ap.add_argument("--method", default="infiniretri", help="an InfiniRetri spec")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    lm = Generator(a.model, a.device)
    lm.warm_up()
    stage = registry("context_compressor").build(a.method)
    cfg = GenerationConfig(max_new_tokens=a.max_new_tokens)
    items = longctx_items(lm, None, a.tokens, a.limit + 1, 0)
    query(lm, stage, items[0], cfg)  # warm-up
    rows = []
    for it in items[1:]:
        t0 = time.perf_counter()
        text, n = query(lm, stage, it, cfg)
        wall = time.perf_counter() - t0
        prof = cProfile.Profile()
        prof.enable()
        query(lm, stage, it, cfg)
        prof.disable()
        st = pstats.Stats(prof).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
        total = sum(v[2] for v in st.values())
        parts = {}
        for label, suffix, fn in PARTS:
            hits = [(v[1], v[3]) for (f, _, name), v in st.items() if name == fn and f.endswith(suffix)]
            calls, cum = (sum(h[0] for h in hits), sum(h[1] for h in hits)) if hits else (0, 0.0)
            parts[label] = {"calls": calls, "seconds": cum * wall / total if total else float("nan")}
        rows.append(
            {"id": it["id"], "wall_s": wall, "prompt_tokens": n, "correct": it["answer"] in text, "parts": parts}
        )
        logger.info("item %s: %.2f s, %s", it["id"], wall, {k: round(v["seconds"], 3) for k, v in parts.items()})
    out = {
        "model": lm.model_name,
        "device": str(lm.model.device),
        "method": a.method,
        "tokens": a.tokens,
        "items": rows,
    }
    lines = [f"{a.model} on {out['device']}, {a.method}, {a.tokens} tokens, {len(rows)} queries (mean seconds)"]
    lines.append(f"{'total':44s} {sum(r['wall_s'] for r in rows) / len(rows):8.3f}")
    for label, _, _ in PARTS:
        s = sum(r["parts"][label]["seconds"] for r in rows) / len(rows)
        c = sum(r["parts"][label]["calls"] for r in rows) / len(rows)
        lines.append(f"{label:44s} {s:8.3f}  ({c:.0f} calls)")
    logger.info("%s", "\n".join(lines))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
