"""Passages for the reranker tests."""

from __future__ import annotations

import random

from ragcore.types import Chunk, ScoredChunk

WORDS = ["river", "mountain", "city", "bridge", "harbour", "forest", "castle", "valley", "island", "desert"]


def passages(n: int, seed: int = 0) -> list[ScoredChunk]:
    """``n`` short passages, best first (rank 1..n)."""
    rng = random.Random(seed)
    return [
        ScoredChunk(Chunk(" ".join(rng.choices(WORDS, k=12)) + f" ({i}).", f"doc{i}"), {"hybrid": 1 - i / 10}, i + 1)
        for i in range(n)
    ]
