"""The ``kv`` suite: answer accuracy and KV-cache memory under a KV-cache compressor.

Two data formats, told apart by their rows:

* NQ-open (``question``, ``answers``, ``gold``; format of ``nq_open_oracle_dev.jsonl.gz``): the passages are
  the top ``k`` retrieved from the file's own corpus (``eval.runner.corpus_retriever``); scored by NQ accuracy.
* key-value retrieval (``ordered_kv_records``, ``key``, ``value``; format of ``kv_retrieval_75_keys.jsonl.gz``):
  the records are shown as one JSON object in one passage and the model is asked for the value of ``key``;
  records are cut (a window around the gold record) until the prompt fits ``max_tokens``; scored by whether
  the value string appears in the answer.

By default compression is question-agnostic (the context is compressed before the question is read); see
``Generator.generate``. ``load_items`` and ``run_items`` are separate so a benchmark can build the prompts
once and run many compressors over them (``bench/kv_matrix.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from eval import metrics
from eval.datasets import NQ_OPEN, load_nq_open, read_jsonl
from ragcore.errors import ConfigError
from ragcore.generator import Generation, GenerationConfig, Generator
from ragcore.prompt import Prompt
from ragcore.types import Chunk

logger = logging.getLogger(__name__)

FORMATS = ("nq", "kv")
KV_SYSTEM = "You read a JSON object of key-value pairs and answer with the value of the requested key only."
DEFAULT_NEW_TOKENS = {"nq": 32, "kv": 64}


@dataclass
class KVItem:
    id: str
    prompt: Prompt
    answers: list[str]


def detect_format(rows: list[dict], path: str | Path = "") -> str:
    """``"nq"`` or ``"kv"`` from the fields of the first row."""
    if not rows:
        raise ConfigError(f"{str(path)!r} holds no rows")
    r = rows[0]
    if isinstance(r, dict) and {"ordered_kv_records", "key", "value"} <= set(r):
        return "kv"
    if isinstance(r, dict) and {"question", "answers", "gold"} <= set(r):
        return "nq"
    fields = sorted(r) if isinstance(r, dict) else type(r).__name__
    raise ConfigError(
        f"{str(path)!r}: unknown row format with fields {fields!r}; expected NQ-open (question, answers, gold) "
        "or key-value retrieval (ordered_kv_records, key, value)"
    )


def _window_limit(gen: Generator, max_tokens: int | None, new_tokens: int) -> int:
    window = int(getattr(gen.model.config, "max_position_embeddings", 0) or 2048)
    limit = window if max_tokens is None else min(max_tokens, window)
    if limit <= new_tokens + 16:
        raise ConfigError(f"--max-tokens {max_tokens!r} leaves no room for a prompt and {new_tokens} new tokens")
    return limit - new_tokens


def kv_prompt(gen: Generator, row: dict, budget: int) -> Prompt:
    """The key-value prompt with as many records (a window holding the gold one) as fit in ``budget`` tokens."""
    records = [tuple(r) for r in row["ordered_kv_records"]]
    key = row["key"]
    keys = [k for k, _ in records]
    if key not in keys:
        raise ConfigError(f"key {key!r} is not among its row's ordered_kv_records")
    gold = keys.index(key)
    question = f'What is the value of the key "{key}" in the JSON object above? Answer with the value only.'

    def build(m: int) -> Prompt:
        start = min(max(0, gold - int(m * gold / len(records))), len(records) - m)
        text = json.dumps(dict(records[start : start + m]), indent=1)
        return gen.prompt(question, [Chunk(text, "kv-records")], system=KV_SYSTEM)

    lo, hi, best = 1, len(records), None
    while lo <= hi:  # the largest record count that fits
        mid = (lo + hi) // 2
        p = build(mid)
        if len(p) <= budget:
            best, lo = p, mid + 1
        else:
            hi = mid - 1
    if best is None:
        raise ConfigError(f"even one key-value record does not fit in {budget} prompt tokens; raise --max-tokens")
    return best


def load_items(
    gen: Generator,
    data: str | Path | None = None,
    k: int = 5,
    limit: int | None = None,
    max_tokens: int | None = None,
    max_new_tokens: int | None = None,
    progress: bool = True,
    retrieved: str | Path | None = None,
    offset: int = 0,
) -> tuple[str, list[KVItem]]:
    """Build the prompts once: returns the detected format and the items (``limit`` of them after the first
    ``offset``; an offset keeps a development slice apart from the questions a headline is measured on)."""
    from eval.runner import passage_source

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"--limit must be a positive integer, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ConfigError(f"--offset must be a non-negative integer, got {offset!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"--k must be a positive integer, got {k!r}")
    path = Path(data) if data else NQ_OPEN
    if not path.exists():
        raise FileNotFoundError(f"no data file at {str(path)!r}")
    rows = read_jsonl(path)
    fmt = detect_format(rows, path)
    if offset >= len(rows):
        raise ConfigError(f"--offset {offset} skips all {len(rows)} items of {str(path)!r}")
    gen.warm_up()
    budget = _window_limit(gen, max_tokens, max_new_tokens or DEFAULT_NEW_TOKENS[fmt])
    items: list[KVItem] = []
    if fmt == "kv":
        for i, row in enumerate(tqdm(rows[offset:][:limit], desc="kv prompts", disable=not progress), offset):
            items.append(KVItem(str(row.get("id", i)), kv_prompt(gen, row, budget), [str(row["value"])]))
        return fmt, items
    ds = load_nq_open(path)
    top = passage_source(ds, path, retrieved, progress)
    for ex in tqdm(ds.examples[offset:][:limit], desc="retrieval", disable=not progress):
        passages = top(ex, k)
        p = gen.prompt(ex.question, passages)
        while len(p) > budget and len(passages) > 1:  # drop the lowest-ranked passages until it fits
            passages = passages[:-1]
            p = gen.prompt(ex.question, passages)
        if len(p) > budget:
            raise ConfigError(f"question {ex.id!r} does not fit in {budget} prompt tokens; raise --max-tokens")
        items.append(KVItem(ex.id, p, ex.answers))
    return fmt, items


def score_answer(fmt: str, text: str, answers: list[str]) -> float:
    """1.0 if ``text`` answers correctly: the value string appears (``kv``), or NQ-open accuracy (``nq``)."""
    if fmt == "kv":
        return float(any(a in text for a in answers))
    return metrics.accuracy(text, answers)


def run_items(
    gen: Generator,
    fmt: str,
    items: list[KVItem],
    compressor: str = "none",
    ratio: float = 0.0,
    max_new_tokens: int | None = None,
    query_aware: bool = False,
    progress: bool = True,
    batch_size: int = 1,
    **compressor_kwargs: Any,
) -> dict[str, Any]:
    """Generate for every item under ``compressor`` (a name, or ``"none"``) at ``ratio``; aggregate.

    ``batch_size > 1`` decodes that many items together (``Generator.generate_batch``; each is still prefilled
    and compressed on its own): the same greedy answers, faster on a GPU. ``decode_tok_s`` is then per
    sequence while sharing a batch."""
    from compress.kv import get_compressor

    if not items:
        raise ConfigError("no items to evaluate")
    comp = None if compressor == "none" else get_compressor(compressor, ratio=ratio, **compressor_kwargs)
    if comp is None and not (isinstance(ratio, (int, float)) and 0 <= ratio < 1):
        raise ConfigError(f"ratio must be a fraction removed in [0, 1), got {ratio!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
    cfg = GenerationConfig(max_new_tokens=max_new_tokens or DEFAULT_NEW_TOKENS[fmt])
    acc, rows = [], []
    kv_b = kv_full = 0
    prefill = decode = 0.0
    new_tok = prompt_tok = 0
    masks_only = False
    bar = tqdm(total=len(items), desc=f"kv {compressor} {ratio}", disable=not progress)
    for it, g in zip(items, _generations(gen, items, cfg, comp, query_aware, batch_size, bar)):
        acc.append(score_answer(fmt, g.text, it.answers))
        kv_b += g.stats["kv_bytes"]
        kv_full += g.stats["kv_bytes_full"]
        masks_only = masks_only or bool(g.stats["masks_only"])
        prefill += g.prefill_s
        decode += g.decode_s
        new_tok += len(g.token_ids)
        prompt_tok += g.prompt_tokens
        rows.append({"id": it.id, "prediction": g.text, "answers": it.answers, "accuracy": acc[-1]})
    bar.close()
    n = len(items)
    a, ci = metrics.mean_ci(acc)
    return {
        "format": fmt,
        "compressor": compressor if comp is None else comp.label,
        "ratio": float(ratio) if comp is not None else 0.0,
        "query_aware": query_aware,
        "model": gen.model_name,
        "accuracy": a,
        "accuracy_ci95": ci,
        "kv_bytes": kv_b / n,
        "kv_bytes_full": kv_full / n,
        "masks_only": masks_only,
        "prefill_s": prefill / n,
        "decode_tok_s": new_tok / decode if decode > 0 else 0.0,
        "mean_prompt_tokens": prompt_tok / n,
        "batch_size": batch_size,
        "n": n,
        "predictions": rows,
    }


def _generations(
    gen: Generator,
    items: list[KVItem],
    cfg: GenerationConfig,
    comp: Any,
    query_aware: bool,
    batch_size: int,
    bar: Any,
) -> Iterator[Generation]:
    """The items' generations in order, ``batch_size`` at a time."""
    for s in range(0, len(items), batch_size):
        chunk = items[s : s + batch_size]
        if batch_size == 1:
            out = [gen.generate(chunk[0].prompt, config=cfg, compressor=comp, query_aware=query_aware)]
        else:
            out = gen.generate_batch([it.prompt for it in chunk], config=cfg, compressor=comp, query_aware=query_aware)
        bar.update(len(chunk))
        yield from out


def eval_kv(
    data: str | Path | None = None,
    compressor: str = "none",
    ratio: float = 0.5,
    model: str = "smollm2-135m",
    limit: int | None = None,
    device: str | None = None,
    k: int = 5,
    max_tokens: int | None = None,
    max_new_tokens: int | None = None,
    query_aware: bool = False,
    progress: bool = True,
    retrieved: str | Path | None = None,
    batch_size: int = 1,
) -> dict[str, Any]:
    """The ``ragcore eval kv`` suite: one compressor at one ratio over an NQ-open or key-value file."""
    if compressor != "none":  # fail on a bad name or ratio before loading anything
        from compress.kv import get_compressor

        get_compressor(compressor, ratio=ratio)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
    gen = Generator(model, device=device)
    fmt, items = load_items(gen, data, k, limit, max_tokens, max_new_tokens, progress, retrieved)
    return run_items(gen, fmt, items, compressor, ratio, max_new_tokens, query_aware, progress, batch_size)
