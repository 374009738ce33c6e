"""Hybrid retriever: BM25 + dense candidates, fused, with every raw score kept on the result."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from ragcore.errors import ConfigError, EmptyCorpusError, EmptyQueryError, IndexCorruptError
from ragcore.models import DEFAULT_EMBEDDER, load_embedder
from ragcore.types import Chunk, ScoredChunk
from retrieval import store
from retrieval.bm25 import BM25Index, top_k
from retrieval.dense import DenseIndex, embed

logger = logging.getLogger(__name__)

FUSIONS = ("weighted", "rrf")
MODES = ("hybrid", "bm25", "dense")


def minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def fuse(
    bm25: np.ndarray, dense: np.ndarray, fusion: str = "weighted", dense_weight: float = 0.9, rrf_k: int = 60
) -> np.ndarray:
    """Fused scores of a candidate pool, given both raw scores of every candidate.

    ``weighted``: ``w * minmax(dense) + (1 - w) * minmax(bm25)`` over the pool.
    ``rrf``: reciprocal rank fusion, ``w / (k + rank_dense) + (1 - w) / (k + rank_bm25)`` (plain RRF at w=0.5,
    up to a factor 2).
    """
    if fusion == "weighted":
        return dense_weight * minmax(dense) + (1 - dense_weight) * minmax(bm25)
    if fusion == "rrf":
        rb = np.argsort(np.argsort(-bm25, kind="stable"), kind="stable") + 1
        rd = np.argsort(np.argsort(-dense, kind="stable"), kind="stable") + 1
        return dense_weight / (rrf_k + rd) + (1 - dense_weight) / (rrf_k + rb)
    raise ConfigError(f"unknown fusion {fusion!r}; options: {', '.join(FUSIONS)}")


class HybridRetriever:
    """BM25 (bm25s) + dense (sentence-transformers + FAISS) retrieval over chunks.

    The default fusion (``weighted``, dense weight 0.9, min-max over a pool of the top ``pool`` of each
    retriever) was chosen on NQ-open (docs/RESULTS.md, section fusion-sweep).
    """

    name: ClassVar[str] = "hybrid"

    def __init__(
        self,
        embedder: str = DEFAULT_EMBEDDER,
        fusion: str = "weighted",
        dense_weight: float = 0.9,
        pool: int = 100,
        rrf_k: int = 60,
        factory: str = "Flat",
        bm25_method: str = "lucene",
        device: str | None = None,
        progress: bool = False,
    ) -> None:
        if fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion {fusion!r}; options: {', '.join(FUSIONS)}")
        if not 0.0 <= dense_weight <= 1.0:
            raise ConfigError(f"dense_weight must be in [0, 1], got {dense_weight!r}")
        if pool < 1 or rrf_k < 1:
            raise ConfigError(f"pool and rrf_k must be >= 1, got pool={pool!r}, rrf_k={rrf_k!r}")
        self.embedder_name, self.fusion, self.dense_weight = embedder, fusion, dense_weight
        self.pool, self.rrf_k, self.factory, self.device, self.progress = pool, rrf_k, factory, device, progress
        self.bm25 = BM25Index(method=bm25_method)
        self.dense: DenseIndex | None = None
        self.chunks: list[Chunk] = []
        self._ids: set[str] = set()
        self._model = None

    # -- lifecycle -------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Load the embedding model (once)."""
        if self._model is None:
            self._model = load_embedder(self.embedder_name, self.device)
            dim = self._model.get_embedding_dimension()
            if self.dense is None:
                self.dense = DenseIndex(dim, self.factory)
            elif self.dense.dim != dim:
                raise ConfigError(
                    f"embedder {self.embedder_name!r} gives dimension {dim}, the index has {self.dense.dim}"
                )

    def __len__(self) -> int:
        return len(self.chunks)

    # -- indexing --------------------------------------------------------------------------------
    def add(self, chunks: Iterable[Chunk], batch_size: int = 64) -> int:
        """Add chunks (those whose id is already indexed are skipped); returns how many were new."""
        new = []
        for c in chunks:
            if not isinstance(c, Chunk):
                raise ConfigError(f"add() takes Chunk objects, got {type(c).__name__}: {c!r:.80}")
            if c.id not in self._ids and c.text.strip():
                self._ids.add(c.id)
                new.append(c)
        if not new:
            return 0
        self.warm_up()
        self.dense.add(embed(self._model, [c.text for c in new], batch_size, self.progress))
        self.chunks.extend(new)
        self.bm25.build([c.text for c in self.chunks])
        return len(new)

    # -- search ----------------------------------------------------------------------------------
    def retrieve(self, question: str, k: int) -> list[ScoredChunk]:
        """The stage method (:class:`ragcore.stages.Retriever`): hybrid ``search(question, k)``."""
        return self.search(question, k)

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[ScoredChunk]:
        return self.search_many([query], k, mode)[0]

    def search_many(
        self, queries: Sequence[str], k: int = 5, mode: str = "hybrid", query_embeddings: np.ndarray | None = None
    ) -> list[list[ScoredChunk]]:
        """Top ``k`` chunks per query. Each result keeps ``scores['bm25']``, ``['dense']`` and ``['hybrid']``.

        ``query_embeddings`` (one row per query, from ``embed_queries``) skips embedding the queries again.
        """
        if mode not in MODES:
            raise ConfigError(f"unknown retrieval mode {mode!r}; options: {', '.join(MODES)}")
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        for q in queries:
            if not isinstance(q, str) or not q.strip():
                raise EmptyQueryError(q)
        if not self.chunks:
            raise EmptyCorpusError("the index holds no documents; add some first (ragcore index PATH)")
        q_emb = query_embeddings
        if mode != "bm25" and q_emb is None:
            q_emb = self.embed_queries(queries)
        return [self._search_one(q, None if q_emb is None else q_emb[i], k, mode) for i, q in enumerate(queries)]

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        self.warm_up()
        return embed(self._model, list(queries))

    def _search_one(self, query: str, q: np.ndarray | None, k: int, mode: str) -> list[ScoredChunk]:
        bm_all = self.bm25.scores(query)
        if mode == "bm25":
            ids, _ = top_k(bm_all, k)
            return self._results(ids, {"bm25": bm_all[ids]})
        d_ids, d_scores = self.dense.search(q, max(k, self.pool) if mode == "hybrid" else k)
        if mode == "dense":
            return self._results(d_ids, {"bm25": bm_all[d_ids], "dense": d_scores})
        b_ids, _ = top_k(bm_all, self.pool)
        cand = np.unique(np.concatenate([b_ids, d_ids]))
        bm, dn = bm_all[cand], self.dense.scores_for(q, cand)
        fused = fuse(bm, dn, self.fusion, self.dense_weight, self.rrf_k)
        order = np.argsort(-fused, kind="stable")[:k]
        return self._results(cand[order], {"bm25": bm[order], "dense": dn[order], "hybrid": fused[order]})

    def _results(self, ids: np.ndarray, scores: dict[str, np.ndarray]) -> list[ScoredChunk]:
        return [
            ScoredChunk(self.chunks[int(i)], {name: float(s[r]) for name, s in scores.items()}, rank=r + 1)
            for r, i in enumerate(ids)
        ]

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> str:
        """Write a new index version under ``path`` (atomically); returns the version name."""
        if not self.chunks:
            raise EmptyCorpusError("refusing to save an empty index")

        def write(folder: Path) -> None:
            with open(folder / "chunks.jsonl", "w", encoding="utf-8") as f:
                for c in self.chunks:
                    f.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\n")
            self.dense.save(folder)
            (folder / "bm25").mkdir()
            self.bm25.save(folder / "bm25")

        meta = {
            "embedder": self.embedder_name,
            "dim": self.dense.dim,
            "factory": self.factory,
            "bm25": {"k1": self.bm25.k1, "b": self.bm25.b, "method": self.bm25.method},
            "counts": {"chunks": len(self.chunks), "embeddings": self.dense.n_docs, "bm25_docs": self.bm25.n_docs},
        }
        name = store.write_version(Path(path), write, meta)
        logger.info("saved %d chunks to %s/%s", len(self.chunks), path, name)
        return name

    @classmethod
    def load(cls, path: str | Path, version: str | None = None, verify: bool = True, **kwargs) -> HybridRetriever:
        """Load an index (default: its CURRENT version). ``kwargs`` set search options (fusion, pool, ...)."""
        folder, m = store.open_version(Path(path), version, verify)
        if "embedder" in kwargs:
            store.check_meta(m, "embedder", kwargs["embedder"], folder)
        kwargs.update(embedder=m["embedder"], factory=m["factory"], bm25_method=m["bm25"]["method"])
        r = cls(**kwargs)
        try:
            with open(folder / "chunks.jsonl", encoding="utf-8") as f:
                r.chunks = [Chunk.from_dict(json.loads(line)) for line in f]
            r.dense = DenseIndex.load(folder, m["dim"], m["factory"])
            r.bm25 = BM25Index.load(folder / "bm25", n_docs=m["counts"]["bm25_docs"], **m["bm25"])
        except (ValueError, KeyError, TypeError, OSError, RuntimeError) as e:
            raise IndexCorruptError(f"index version {str(folder)!r} could not be read: {e}") from e
        counts = {"chunks": len(r.chunks), "embeddings": r.dense.n_docs, "bm25_docs": r.bm25.n_docs}
        if counts != m["counts"] or r.dense.index.ntotal != len(r.chunks) or r.dense.embeddings.shape[1] != m["dim"]:
            raise IndexCorruptError(
                f"index version {str(folder)!r} is inconsistent: {counts} vs manifest {m['counts']}"
            )
        r._ids = {c.id for c in r.chunks}
        return r
