"""Hybrid retrieval: BM25 (bm25s) + dense (sentence-transformers, FAISS), fused, with a versioned on-disk index.

Registers the ``retriever`` stages of :mod:`ragcore.registry` (``hybrid``).
"""

from ragcore.registry import registry
from retrieval.hybrid import HybridRetriever

registry("retriever").add(HybridRetriever)

__all__ = ["HybridRetriever"]
