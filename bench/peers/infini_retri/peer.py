"""Peer runner: the authors' ``infini-retri`` 0.0.3 (``infini_retri.InfiniRetri``) on the inputs of
``ragcore eval longctx``, scored and written as ragcore's runs are.

Runs under its own venv (``.venv-infini``, see docs/gpu-runs.md) from the repository root; it imports no ragcore
module, only ``eval.metrics``, ``eval.stats``, ``eval.report`` and ``eval.resources`` (standard library only).
The input is the JSON that ``python -m bench.peers.infini_retri.inputs`` writes (haystack, question, answer and
instruction per item, and the model's converted Hugging Face folder).

Settings matched to ``infiniretri`` of ``compress.context`` (defaults: ``segment=1024, top_k=64, carry=512,
answer_length=8``): ``window_length`` = segment (new tokens read per step, whole sentences), ``topk`` = top_k,
``answer_length`` = answer_length (its 1-D box filter), ``max_new_tokens`` = 48, greedy decoding (the model's
sampling settings are cleared; the package's ``temperature`` then has no effect), float32 on CPU and bfloat16 on
CUDA (as ``ragcore.models.load_generator``). What differs, by the package's design:

* attention: eager (the package asserts it; ragcore recomputes only the question rows of one layer), and every
  layer's full attention matrix is returned by the forward pass (``output_attentions=True``);
* layer: the package reads the last layer (hard-coded ``attentions[-1]``); ``--layer L`` hands it layer ``L``'s
  matrix instead (a patch of the peer, reported in ``method``), for comparison with ``infiniretri(layer=L)``;
* sentences: the package splits on a regular expression. Its default, ``(\\n\\n)|([。！？.?!])``, finds no
  boundary inside key-value records (one record per line, no full stop), so a whole segment is one "sentence",
  is always kept, and the carried text grows to the whole input. ``--split-pattern lines`` (default) adds single
  newlines, ``(\\n)|([。！？.?!])``, which gives one sentence per record, as ragcore's pysbd splitter does;
  ``--split-pattern package`` keeps the package's default;
* carried text: all sentences holding a top-k token (no token cap; ragcore keeps at most ``carry`` tokens);
* question tokens: weighted by their attention to the question in the first window (the package's
  ``use_question_weight``, squared); ragcore weighs each question token the same;
* prompt: the package wraps ``prompt`` in the chat template with an empty system turn; the item's instruction
  (ragcore's system turn) is the template's first paragraph instead, then the context, ``Question:``, the
  question and ``Answer:``, separated by blank lines (the package needs them to find the parts).

Accuracy: ``eval.metrics.contains`` (the answer string in the output), as ``ragcore eval longctx``. Seconds per
query: the ``InfiniRetri.generate`` call (reading + answering), model loaded beforehand, as ragcore's timing of
``compress`` + ``generate``; wall clock, and the process's CPU time (comparable on a shared CPU). Peak memory: ``eval.resources.peak_memory`` (CUDA peak allocation, or the process's
peak resident size on CPU, model included). The output is rewritten after every item, so a stopped run leaves
its first items.

Usage::

    HF_HUB_OFFLINE=1 .venv-infini/bin/python -m bench.peers.infini_retri.peer \\
        --input out/longctx/inputs-smollm2-8k.json --device cpu --out out/longctx/peer-smollm2-8k.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # the package draws a progress bar per query

import torch  # noqa: E402
from infini_retri import InfiniRetri  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from eval.metrics import contains  # noqa: E402
from eval.report import dist_version, read_json, write_json  # noqa: E402
from eval.resources import peak_memory  # noqa: E402
from eval.stats import mean_ci  # noqa: E402

logger = logging.getLogger("bench.peers.infini_retri.peer")

SPLIT_PATTERNS = {
    "lines": "(\n)|([。！？.?!])",  # the package's sentence ends plus single newlines: one key-value record each
    "package": "(\n\n)|([。！？.?!])",  # infini-retri 0.0.3's default (Pipline.default_config)
}


def template(system: str | None, answer_prefix: str | None = None) -> str:
    """The ``prompt`` given to ``InfiniRetri.generate``: the item's instruction, then the package's own layout
    (its default is ``Read the book ... \\n\\n{context}\\n\\nQuestion:\\n\\n{question}\\n\\nAnswer:``), and the item's
    answer prefix after ``Answer:`` (the package applies the chat template to the whole prompt, so the prefix
    ends the user's turn instead of opening the model's, as ragcore's prompt does)."""

    def esc(s: str) -> str:
        return s.replace("{", "{{").replace("}", "}}")

    head = (esc(system) + "\n\n") if system else ""
    tail = (" " + esc(answer_prefix)) if answer_prefix else ""
    return head + "{context}\n\nQuestion:\n\n{question}\n\nAnswer:" + tail


def set_split_pattern(ir: InfiniRetri, pattern: str) -> None:
    """Set the package's sentence pattern where it reads it: the pipeline's config and its copies in the chunker
    and the retriever (the ``retri_split_pattern`` argument of ``generate`` is not read by 0.0.3)."""
    p = ir.ir
    p.config["retri_split_pattern"] = pattern
    p.retri_split_pattern = pattern
    p.chunks.split_sen_pattern = pattern
    p.retri.retri_split_pattern = pattern


def read_layer(ir: InfiniRetri, layer: int) -> None:
    """Make the package score tokens with layer ``layer``'s attention instead of the last layer's: it reads
    ``output_attentions[-1]``, so it is handed the layers up to ``layer``."""
    thoughts = ir.ir.retri.thoughts
    focus = thoughts.get_focus_index

    def get_focus_index(*args: Any, **kwargs: Any) -> Any:
        kwargs["output_attentions"] = tuple(kwargs["output_attentions"])[: layer + 1]
        return focus(*args, **kwargs)

    thoughts.get_focus_index = get_focus_index


def greedy(model: Any) -> None:
    """Greedy decoding, as ragcore's generator: no sampling, no penalties, whatever the model's folder says."""
    gc = model.generation_config
    gc.do_sample = False
    gc.temperature, gc.top_p, gc.top_k = None, None, None
    gc.repetition_penalty = None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, type=Path, help="JSON from python -m bench.peers.infini_retri.inputs")
    ap.add_argument("--model", default=None, help="Hugging Face folder (default: the one the input names)")
    ap.add_argument("--window", type=int, default=1024, help="window_length (ragcore: segment)")
    ap.add_argument("--topk", type=int, default=64, help="topk (ragcore: top_k)")
    ap.add_argument("--answer-length", type=int, default=8, help="answer_length (ragcore: answer_length)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--split-pattern", choices=sorted(SPLIT_PATTERNS), default="lines")
    ap.add_argument("--layer", type=int, default=None, help="read this layer instead of the last (a patch)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 cpu, bf16 cuda)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--log-level", default="INFO")
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")
    src = read_json(a.input)
    items = src["items"][: a.limit] if a.limit else src["items"]
    if not items:
        raise SystemExit(f"{a.input}: no items")
    folder = a.model or src["folder"]
    dtype = getattr(torch, a.dtype) if a.dtype else (torch.float32 if a.device == "cpu" else torch.bfloat16)
    dev = torch.device(a.device)

    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager").to(dev).eval()
    greedy(model)
    ir = InfiniRetri(model, tok, topk=a.topk, answer_length=a.answer_length, window_length=a.window)
    set_split_pattern(ir, SPLIT_PATTERNS[a.split_pattern])
    n_layers = model.config.num_hidden_layers
    if a.layer is not None:
        if not 0 <= a.layer < n_layers:
            raise SystemExit(f"--layer must be in [0, {n_layers - 1}], got {a.layer}")
        read_layer(ir, a.layer)
    logger.info("loaded %s (%s, %s, eager) in %.1fs", folder, type(model).__name__, dtype, time.perf_counter() - t)

    infos: list[dict[str, Any]] = []
    generate2 = ir.ir.generate2

    def keep_info(*args: Any, **kwargs: Any) -> Any:  # InfiniRetri.generate drops the info; keep it
        response, info = generate2(*args, **kwargs)
        infos.append(info)
        return response, info

    ir.ir.generate2 = keep_info

    opts = f"window_length={a.window}, topk={a.topk}, answer_length={a.answer_length}"
    opts += f", layer={a.layer}" if a.layer is not None else ""
    opts += ", split=package" if a.split_pattern == "package" else ""
    method = f"infini-retri 0.0.3 ({opts})"
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    preds: list[dict[str, Any]] = []
    for i, it in enumerate(items):
        t0, c0 = time.perf_counter(), time.process_time()
        error = None
        try:
            text = ir.generate(
                it["text"],
                question=it["question"],
                prompt=template(it.get("system"), it.get("answer_prefix")),
                topk=a.topk,
                answer_length=a.answer_length,
                window_length=a.window,
                temperature=None,
                max_new_tokens=a.max_new_tokens,
            )
        except Exception as e:  # noqa: BLE001 - the package's failures (e.g. its span asserts) are reported
            text, error = "", f"{type(e).__name__}: {e}"
            logger.exception("item %s failed", it["id"])
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        info = infos[-1] if infos and error is None else {}
        preds.append(
            {
                "id": it["id"],
                "accuracy": contains(text, it["answer"]),
                "depth": it["depth"],
                "seconds": secs,
                "cpu_seconds": cpu,
                "prompt_tokens": info.get("input_token_length"),
                "answer_in_prompt": contains(info.get("input_text", ""), it["answer"]),
                "text": text,
                **({"error": error} if error else {}),
            }
        )
        logger.info(
            "[%d/%d] %s %.1fs (CPU %.1fs), answer read from %s tokens: %r (acc %d)",
            i + 1,
            len(items),
            it["id"],
            secs,
            cpu,
            info.get("input_token_length"),
            text[:60],
            preds[-1]["accuracy"],
        )
        write_json(a.out, summary(a, src, method, folder, dtype, dev, model, preds), markdown=False)
    brief = {k: v for k, v in summary(a, src, method, folder, dtype, dev, model, preds).items() if k != "predictions"}
    sys.stdout.write(json.dumps(brief) + "\n")
    return 0


def summary(
    a: argparse.Namespace,
    src: dict[str, Any],
    method: str,
    folder: str,
    dtype: torch.dtype,
    dev: torch.device,
    model: Any,
    preds: list[dict[str, Any]],
) -> dict[str, Any]:
    """The result in the shape of ``ragcore eval longctx --out`` (plus the peer's settings and versions)."""
    acc, ci = mean_ci([p["accuracy"] for p in preds])
    read = [p["prompt_tokens"] for p in preds if p["prompt_tokens"] is not None]
    return {
        "suite": "longctx",
        "model": src["model"],
        "data": src["data"],
        "method": method,
        "tokens": src["tokens"],
        "n": len(preds),
        "accuracy": acc,
        "ci95": ci,
        "seconds_per_query": sum(p["seconds"] for p in preds) / max(1, len(preds)),
        "cpu_seconds_per_query": sum(p["cpu_seconds"] for p in preds) / max(1, len(preds)),
        "peak_mem_bytes": peak_memory(dev),
        "prompt_tokens_mean": sum(read) / max(1, len(read)),
        "answer_in_prompt": sum(p["answer_in_prompt"] for p in preds) / max(1, len(preds)),
        "device": str(dev),
        "n_errors": sum("error" in p for p in preds),
        "peer": {
            "package": "infini-retri",
            "folder": folder,
            "input": str(a.input),
            "offset": src.get("offset", 0),
            "window_length": a.window,
            "topk": a.topk,
            "answer_length": a.answer_length,
            "layer": "last" if a.layer is None else a.layer,
            "split_pattern": SPLIT_PATTERNS[a.split_pattern],
            "max_new_tokens": a.max_new_tokens,
            "dtype": str(dtype).removeprefix("torch."),
            "attn_implementation": model.config._attn_implementation,
            "versions": {k: dist_version(k) for k in ("infini-retri", "transformers", "torch")},
        },
        "predictions": preds,
    }


if __name__ == "__main__":
    raise SystemExit(main())
