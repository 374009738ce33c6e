"""Rerankers: the order in which the generator reads the passages (``Reranker.rerank(question, passages, lm)``).

Each reranker is registered in the ``reranker`` registry of :mod:`ragcore.registry` by the line below; the
conformance suite (tests/rerank/test_conformance.py) checks every one.
"""

from ragcore.registry import registry
from rerank.attention_sort import AttentionSort
from rerank.attnrank import AttnRank
from rerank.orders import LostInTheMiddleOrder, RandomOrder, RetrievalOrder, ReversedOrder

RERANKERS = registry("reranker")
RERANKERS.add(RetrievalOrder, ReversedOrder, LostInTheMiddleOrder, RandomOrder, AttnRank, AttentionSort)

__all__ = [
    "RERANKERS",
    "AttentionSort",
    "AttnRank",
    "LostInTheMiddleOrder",
    "RandomOrder",
    "RetrievalOrder",
    "ReversedOrder",
]
