"""The position suite (``ragcore eval position``): does accuracy depend on where the gold passage sits, and does
an order chosen from the model's attention help?

Each NQ-open question gets ``N = 10`` passages: its gold passage and the nine highest-ranked hybrid-retrieved
passages of the file's corpus that hold none of its gold answers. The gold passage is given relevance rank
``p + 1`` for ``p`` in ``POSITIONS`` (the distractors keep their retrieval order around it), as a retriever that
ranked it there would; each order (a registered reranker) then decides the prompt's order. ``retrieval`` leaves
the gold at slot ``p``. Accuracy per gold rank and averaged over ranks, with 95% intervals; every order against
``retrieval`` paired per question and rank. Calibration (``ragcore calibrate``) uses the first ``DEV`` questions
(the development slice); the sweep starts after them by default. Figures: docs/RESULTS.md, section ``position``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from eval import metrics
from eval.datasets import NQ_OPEN, QAExample, load_nq_open, window
from eval.report import same_setting
from eval.stats import mean_ci
from ragcore.errors import ConfigError
from ragcore.generator import GenerationConfig, Generator
from ragcore.registry import registry, split_top
from ragcore.types import Chunk, ScoredChunk

logger = logging.getLogger(__name__)
POSITIONS = (0, 2, 5, 7, 9)
N_PASSAGES = 10
DEV = 200  # questions [0, DEV) calibrate; the sweep reads questions from DEV on
ORDERS = ("retrieval", "reversed", "lost_in_the_middle", "random", "attnrank", "attention_sort")


@dataclass
class PositionItem:
    """A question, its gold passage and its distractors (retrieval order)."""

    example: QAExample
    gold: Chunk
    distractors: list[Chunk]

    def passages(self, rank: int) -> list[ScoredChunk]:
        """The ``N`` passages with the gold one at relevance rank ``rank + 1`` (index ``rank``)."""
        chunks = [*self.distractors[:rank], self.gold, *self.distractors[rank:]]
        return [ScoredChunk(c, {"relevance": float(-i)}, i + 1) for i, c in enumerate(chunks)]


def _holds_answer(text: str, answers: Sequence[str]) -> bool:
    t = metrics.normalize(text)
    return any(metrics.normalize(a) and metrics.normalize(a) in t for a in answers)


def position_items(
    data: str | Path | None = None,
    limit: int | None = None,
    offset: int = DEV,
    n_passages: int = N_PASSAGES,
    progress: bool = False,
) -> list[PositionItem]:
    """``limit`` questions from ``offset`` on, each with its gold passage and ``n_passages - 1`` distractors."""
    from eval.runner import corpus_retriever

    path = Path(data) if data else NQ_OPEN
    ds = load_nq_open(path)
    examples = window(ds.examples, offset, limit, f"questions of {str(path)!r}")
    retr = corpus_retriever(ds, path, progress)
    by_id = ds.by_id()
    items = []
    for ex in tqdm(examples, desc="distractors", disable=not progress):
        gold = by_id[next(iter(ex.gold_ids))]
        found = retr.search(ex.question, 4 * n_passages)
        dis = [r.chunk for r in found if r.chunk.id not in ex.gold_ids and not _holds_answer(r.chunk.text, ex.answers)]
        if len(dis) >= n_passages - 1:
            items.append(PositionItem(ex, gold, dis[: n_passages - 1]))
    return items


def calibration_examples(
    data: str | Path | None = None, limit: int = DEV, seed: int = 0, progress: bool = False
) -> list[tuple[str, list[ScoredChunk]]]:
    """The development slice for ``ragcore calibrate``: the first ``limit`` (<= DEV) questions, each with its
    ``N`` passages and the gold one at a seeded random rank."""
    if limit > DEV:
        raise ConfigError(
            f"calibration reads the development slice of {DEV} questions, got limit {limit}", param="limit"
        )
    rng = random.Random(seed)
    items = position_items(data, limit, offset=0, progress=progress)
    return [(it.example.question, it.passages(rng.randrange(N_PASSAGES))) for it in items]


def run_position(
    model: str | Generator = "qwen2.5-0.5b",
    data: str | Path | None = None,
    orders: Sequence[str] = ORDERS,
    limit: int | None = None,
    offset: int = DEV,
    positions: Sequence[int] = POSITIONS,
    device: str | None = None,
    max_new_tokens: int = 24,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy per gold rank for every order (spec strings of rerankers).

    Returns ``{"model", "n", "positions", "orders": {label: {"accuracy": {rank: mean}, "ci95": {...},
    "accuracy_avg", "ci95_avg", "diff_vs_retrieval", "diff_ci95", "seconds_per_query", "gold_slot": {rank:
    mean slot}}}, "predictions": [...]}``; ``n`` questions per rank."""
    lm = model if isinstance(model, Generator) else Generator(model, device)
    lm.warm_up()
    stages = [registry("reranker").build(o) for o in orders]
    for p in positions:
        if not 0 <= p < N_PASSAGES:
            raise ConfigError(f"positions must be in [0, {N_PASSAGES - 1}], got {p!r}", param="positions")
    items = position_items(data, limit, offset, progress=progress)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens)
    preds: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    for st in stages:
        t0 = time.perf_counter()
        rows = []
        for it in tqdm(items, desc=st.label, disable=not progress):
            for p in positions:
                passages = it.passages(p)
                ordered = st.rerank(it.example.question, passages, lm)
                slot = next(i for i, x in enumerate(ordered) if x.chunk.id == it.gold.id)
                g = lm.generate(lm.prompt(it.example.question, ordered), config=cfg)
                acc = metrics.accuracy(g.text, it.example.answers)
                rows.append(
                    {"order": st.label, "id": it.example.id, "rank": p, "slot": slot, "accuracy": acc, "text": g.text}
                )
        secs = (time.perf_counter() - t0) / max(1, len(rows))
        preds += rows
        out[st.label] = _summary(rows, positions, secs)
    _paired_to_retrieval(out, preds)
    return {
        "suite": "position",
        "model": lm.model_name,
        "data": str(data or NQ_OPEN),
        "n": len(items),
        "offset": offset,
        "positions": list(positions),
        "orders": out,
        "predictions": preds,
    }


def merge(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One position result from runs of one model on disjoint question shards or different orders (each a
    ``run_position`` result): predictions joined, every order summarised again over all its questions, and each
    order's paired difference against ``retrieval`` on the (question, rank) pairs both answered.

    Raises
    ------
    ragcore.errors.ConfigError
        Mixed models or positions, or one (order, question, rank) answered twice.
    """
    if not results:
        raise ConfigError("merge needs at least one position result", param="results")
    same_setting(results, ("model", "positions"), "merge takes position runs")
    preds = [p for r in results for p in r["predictions"]]
    keys = [(p["order"], p["id"], p["rank"]) for p in preds]
    if len(set(keys)) != len(keys):
        raise ConfigError("merge got an (order, question, rank) twice: overlapping shards", param="results")
    positions = results[0]["positions"]
    secs: dict[str, list[tuple[float, int]]] = {}
    for r in results:
        for label, s in r["orders"].items():
            secs.setdefault(label, []).append(
                (s["seconds_per_query"], sum(p["order"] == label for p in r["predictions"]))
            )
    out: dict[str, Any] = {}
    for label, parts in secs.items():
        rows = [p for p in preds if p["order"] == label]
        out[label] = _summary(rows, positions, sum(s * n for s, n in parts) / max(1, sum(n for _, n in parts)))
    _paired_to_retrieval(out, preds)
    ids = {p["id"] for p in preds}
    return {
        **{k: v for k, v in results[0].items() if k not in ("orders", "predictions", "n", "offset")},
        "n": len(ids),
        "offset": min(r.get("offset", DEV) for r in results),
        "orders": out,
        "predictions": preds,
    }


def _paired_to_retrieval(orders: dict[str, dict[str, Any]], preds: list[dict[str, Any]]) -> None:
    """Each order's ``diff_vs_retrieval`` and ``diff_ci95``: its paired accuracy change against the retrieval
    order on the (question, rank) pairs both answered (none without a retrieval run)."""
    base = {(p["id"], p["rank"]): p["accuracy"] for p in preds if p["order"] == "retrieval"}
    for label, s in orders.items():
        if base and label != "retrieval":
            d = [
                p["accuracy"] - base[(p["id"], p["rank"])]
                for p in preds
                if p["order"] == label and (p["id"], p["rank"]) in base
            ]
            s["diff_vs_retrieval"], s["diff_ci95"] = mean_ci(d)


def _summary(rows: list[dict[str, Any]], positions: Sequence[int], secs: float) -> dict[str, Any]:
    acc, ci, slot = {}, {}, {}
    for p in positions:
        xs = [r["accuracy"] for r in rows if r["rank"] == p]
        acc[str(p)], ci[str(p)] = mean_ci(xs)
        slot[str(p)] = sum(r["slot"] for r in rows if r["rank"] == p) / max(1, len(xs))
    avg, avg_ci = mean_ci([r["accuracy"] for r in rows])
    return {
        "accuracy": acc,
        "ci95": ci,
        "accuracy_avg": avg,
        "ci95_avg": avg_ci,
        "gold_slot": slot,
        "seconds_per_query": secs,
    }


def parse_orders(text: str) -> list[str]:
    """``"all"`` or reranker specs separated by commas (commas inside brackets are options)."""
    if text.strip() == "all":
        return list(ORDERS)
    names = [x.strip() for x in split_top(text, ",") if x.strip()]
    if not names:
        raise ConfigError(f"order needs at least one reranker name, got {text!r}", param="order")
    return names
