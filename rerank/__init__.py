"""Rerankers: the order in which the generator reads the passages (``Reranker.rerank(question, passages, lm)``).

Each reranker is registered in the ``reranker`` registry of :mod:`ragcore.registry` by the line below.
"""

from ragcore.registry import registry

RERANKERS = registry("reranker")
RERANKERS.add()
