"""Baseline orders: where each passage sits in the prompt, without reading the model.

Passages arrive best first (the retriever's ranking, or the relevance rank an experiment assigns). Every order here
is a permutation of them; ``scores[name]`` holds the passage's input relevance rank (1 = best), so the report says
where each passage came from. The position experiment (``ragcore eval position``, docs/RESULTS.md section
``position``) compares them with the attention-driven orders.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ragcore.stages import Stage, option
from ragcore.types import ScoredChunk


def place(passages: Sequence[ScoredChunk], slots: Sequence[int], name: str) -> list[ScoredChunk]:
    """Put the passage of relevance rank ``r`` (its index in ``passages``) into slot ``slots[r]``; copies of the
    passages come back with ``scores[name]`` = their relevance rank (1-based). ``slots`` is a permutation."""
    out: list[ScoredChunk | None] = [None] * len(passages)
    for r, (p, s) in enumerate(zip(passages, slots)):
        out[s] = ScoredChunk(p.chunk, {**p.scores, name: float(r + 1)}, p.rank)
    return [p for p in out if p is not None]


def edges_first(n: int) -> list[int]:
    """Slots from the edges inward: rank 1 -> first slot, rank 2 -> last, rank 3 -> second, rank 4 -> second last."""
    return [r // 2 if r % 2 == 0 else n - 1 - r // 2 for r in range(n)]


@dataclass
class SlotOrder(Stage):
    """An order that depends only on the number of passages (and, for a seeded one, on the question):
    ``slots(n, question)`` gives the slot of the passage of each relevance rank."""

    def slots(self, n: int, question: str) -> list[int]:
        raise NotImplementedError

    def rerank(self, question: str, passages: Sequence[ScoredChunk], lm: Any = None) -> list[ScoredChunk]:
        return place(passages, self.slots(len(passages), question), self.name)


@dataclass
class RetrievalOrder(SlotOrder):
    """The retriever's order: best first (the plain baseline)."""

    name: ClassVar[str] = "retrieval"

    def slots(self, n: int, question: str) -> list[int]:
        return list(range(n))


@dataclass
class ReversedOrder(SlotOrder):
    """Best last, next to the question (recency bias, Liu et al. 2023, arXiv 2307.03172)."""

    name: ClassVar[str] = "reversed"

    def slots(self, n: int, question: str) -> list[int]:
        return [n - 1 - r for r in range(n)]


@dataclass
class LostInTheMiddleOrder(SlotOrder):
    """Best at both ends, worst in the middle (the U-shaped accuracy of Liu et al. 2023, arXiv 2307.03172)."""

    name: ClassVar[str] = "lost_in_the_middle"

    def slots(self, n: int, question: str) -> list[int]:
        return edges_first(n)


@dataclass
class RandomOrder(SlotOrder):
    """A random order, seeded by ``seed`` and the question (the same question gets the same order).

    Parameters
    ----------
    seed : int
        Seed of the shuffle.
    """

    name: ClassVar[str] = "random"
    seed: int = option(0, minimum=0)

    def slots(self, n: int, question: str) -> list[int]:
        slots = list(range(n))
        random.Random(f"{self.seed}\0{question}").shuffle(slots)
        return slots
