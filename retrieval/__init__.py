"""Hybrid retrieval: BM25 (bm25s) + dense (sentence-transformers, FAISS), fused, with a versioned on-disk index."""
