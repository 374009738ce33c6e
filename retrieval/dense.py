"""Dense retrieval: sentence-transformers embeddings in a FAISS inner-product index."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ragcore.errors import ConfigError, EmptyCorpusError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)


class DenseIndex:
    """Normalised embeddings (the source of truth, kept as a float32 matrix) and a FAISS index over them.

    ``factory`` is a FAISS index-factory string: ``"Flat"`` (exact inner product, the default) or e.g.
    ``"HNSW32"`` for approximate search on large corpora.
    """

    def __init__(self, dim: int, factory: str = "Flat") -> None:
        import faiss

        if dim <= 0:
            raise ConfigError(f"embedding dimension must be positive, got {dim!r}")
        try:
            self.index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            why = str(e).strip().splitlines()[-1].split(": ")[-1]
            raise ConfigError(
                f"bad FAISS index factory string {factory!r} ({why})", param="factory", hint="try 'Flat' or 'HNSW32'"
            ) from e
        self.dim, self.factory = dim, factory
        self.embeddings = np.zeros((0, dim), dtype=np.float32)

    @property
    def n_docs(self) -> int:
        return len(self.embeddings)

    def add(self, emb: np.ndarray) -> None:
        """Add unit-length embeddings (float32, shape ``(n, dim)``). A factory that needs training (IVF, PQ) is
        trained on the first batch; ``ConfigError`` (parameter ``factory``) when that batch is too small."""
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ConfigError(f"embeddings must have shape (n, {self.dim}), got {emb.shape}")
        if not self.index.is_trained:
            self._train(emb)
        self.index.add(emb)
        self.embeddings = np.concatenate([self.embeddings, emb]) if self.n_docs else emb

    def _train(self, emb: np.ndarray) -> None:
        import faiss

        try:
            nlist = faiss.extract_index_ivf(self.index).nlist
        except RuntimeError:
            nlist = 0
        if len(emb) < nlist:
            raise ConfigError(
                f"FAISS index factory {self.factory!r} has {nlist} clusters and needs at least {nlist} chunks to "
                f"train, but there are {len(emb)}",
                param="factory",
                hint="use 'Flat' (exact, right for small collections) or an IVF with fewer clusters than chunks",
            )
        try:
            self.index.train(emb)
        except RuntimeError as e:
            msg = str(e).split("failed: ")[-1].strip()
            raise ConfigError(
                f"FAISS index factory {self.factory!r} could not be trained on {len(emb)} chunks: {msg}",
                param="factory",
                hint="use 'Flat' (exact) or 'HNSW32', which need no training",
            ) from e

    def keep(self, mask: np.ndarray) -> DenseIndex:
        """A new index over the rows where ``mask`` is true (FAISS indexes cannot drop rows in place everywhere)."""
        out = DenseIndex(self.dim, self.factory)
        kept = self.embeddings[np.asarray(mask, dtype=bool)]
        if len(kept):
            out.add(kept)
        return out

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (doc indices, inner products) for one query embedding, best first."""
        if self.n_docs == 0:
            raise EmptyCorpusError("the dense index is empty; add documents first")
        scores, ids = self.index.search(np.ascontiguousarray(q.reshape(1, -1), dtype=np.float32), min(k, self.n_docs))
        keep = ids[0] >= 0
        return ids[0][keep].astype(np.int64), scores[0][keep]

    def scores_for(self, q: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Exact inner products of the query with the given documents."""
        return self.embeddings[ids] @ q.astype(np.float32).ravel()

    def save(self, folder: Path) -> None:
        import faiss

        np.save(folder / "embeddings.npy", self.embeddings, allow_pickle=False)
        faiss.write_index(self.index, str(folder / "dense.faiss"))

    @classmethod
    def load(cls, folder: Path, dim: int, factory: str) -> DenseIndex:
        import faiss

        idx = cls.__new__(cls)
        idx.dim, idx.factory = dim, factory
        idx.embeddings = np.load(folder / "embeddings.npy", allow_pickle=False)
        idx.index = faiss.read_index(str(folder / "dense.faiss"))
        return idx


def embed(model: SentenceTransformer, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Unit-length float32 embeddings of ``texts``."""
    return model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=progress
    ).astype(np.float32)
