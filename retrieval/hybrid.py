"""Hybrid retriever: BM25 + dense candidates, fused, with every raw score kept on the result."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from ragcore.errors import (
    ConfigError,
    EmptyCorpusError,
    EmptyQueryError,
    IndexCorruptError,
    NoQueryTermsError,
    SourceNotFoundError,
)
from ragcore.models import DEFAULT_EMBEDDER, load_embedder
from ragcore.types import Chunk, ScoredChunk
from retrieval import store
from retrieval.bm25 import ANALYZER, BM25Index, top_k
from retrieval.dense import DenseIndex, embed

logger = logging.getLogger(__name__)

FUSIONS = ("weighted", "minmax", "rrf")
MODES = ("hybrid", "bm25", "dense")


def minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def scale_bm25(x: np.ndarray) -> np.ndarray:
    """BM25 scores over the pool's best: in [0, 1], all 0 when no candidate matches a query term (not min-max,
    which would give the top of a pool 1 however weak it is, and a pool of one 0 however good)."""
    hi = float(x.max()) if len(x) else 0.0
    return np.clip(x, 0, None) / hi if hi > 0 else np.zeros_like(x)


def fuse(
    bm25: np.ndarray, dense: np.ndarray, fusion: str = "weighted", dense_weight: float = 0.9, rrf_k: int = 60
) -> np.ndarray:
    """Fused scores of a candidate pool, given both raw scores of every candidate.

    ``weighted``: ``w * max(cosine, 0) + (1 - w) * bm25 / max(bm25 over the pool)``, in [0, 1]: the dense side
    keeps its absolute scale, so a query that matches nothing scores low and a perfect match high whatever the
    pool (issue 12: min-max over the pool showed 0.9 for no match and 0.0 for a one-chunk index).
    ``minmax``: ``w * minmax(cosine) + (1 - w) * minmax(bm25)`` over the pool (the default before issue 12; its scores
    are only relative to the pool: docs/RESULTS.md, fusion-sweep, compares the two).
    ``rrf``: reciprocal rank fusion, ``w / (k + rank_dense) + (1 - w) / (k + rank_bm25)`` (plain RRF at w=0.5,
    up to a factor 2): a score of ranks, not of match quality.
    """
    if fusion == "weighted":
        return dense_weight * np.clip(dense, 0, None) + (1 - dense_weight) * scale_bm25(bm25)
    if fusion == "minmax":
        return dense_weight * minmax(dense) + (1 - dense_weight) * minmax(bm25)
    if fusion == "rrf":
        rb = np.argsort(np.argsort(-bm25, kind="stable"), kind="stable") + 1
        rd = np.argsort(np.argsort(-dense, kind="stable"), kind="stable") + 1
        return dense_weight / (rrf_k + rd) + (1 - dense_weight) / (rrf_k + rb)
    raise ConfigError(f"unknown fusion {fusion!r}; options: {', '.join(FUSIONS)}")


class HybridRetriever:
    """BM25 (bm25s) + dense (sentence-transformers + FAISS) retrieval over chunks.

    The default fusion (``weighted``, dense weight 0.9, over a pool of the top ``pool`` of each retriever) was
    chosen on NQ-open (docs/RESULTS.md, section fusion-sweep); ``fuse`` says how scores are scaled.

    Sources: every chunk belongs to one source (``chunk.source_id``, a file's path); ``sources`` maps each to what
    was indexed of it (``sha256`` of the file, ``chunks``, ``type``), ``remove(source_id)`` drops one, and
    ``replace_sources`` swaps whole sources for their current content (what ``retrieval.indexer.sync`` uses).
    ``min_score``: the default ``search`` floor on the dense cosine (None: no floor).
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
        min_score: float | None = None,
    ) -> None:
        if fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion {fusion!r}; options: {', '.join(FUSIONS)}")
        if not 0.0 <= dense_weight <= 1.0:
            raise ConfigError(f"dense_weight must be in [0, 1], got {dense_weight!r}")
        if pool < 1 or rrf_k < 1:
            raise ConfigError(f"pool and rrf_k must be >= 1, got pool={pool!r}, rrf_k={rrf_k!r}")
        self.embedder_name, self.fusion, self.dense_weight = embedder, fusion, dense_weight
        self.pool, self.rrf_k, self.factory, self.device, self.progress = pool, rrf_k, factory, device, progress
        self.min_score = _check_min_score(min_score)
        self.bm25 = BM25Index(method=bm25_method)
        self.dense: DenseIndex | None = None
        self.chunks: list[Chunk] = []
        self.sources: dict[str, dict] = {}
        self.chunking: dict | None = None  # how the chunks were made (kept in the manifest; compared on re-index)
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

    @property
    def max_tokens(self) -> int:
        """How many tokens of a passage the embedder reads (its window less the two special tokens)."""
        self.warm_up()
        return int(self._model.max_seq_length) - 2

    # -- indexing --------------------------------------------------------------------------------
    def add(self, chunks: Iterable[Chunk], batch_size: int = 64) -> int:
        """Add chunks (those whose id is already indexed are skipped); returns how many were new.

        A chunk longer than the embedder's window is embedded from its start only: each one is named in a
        warning (``truncated`` lists them).
        """
        new = []
        for c in chunks:
            if not isinstance(c, Chunk):
                raise ConfigError(f"add() takes Chunk objects, got {type(c).__name__}: {c!r:.80}", param="chunks")
            if c.id not in self._ids and c.text.strip():
                self._ids.add(c.id)
                new.append(c)
        if not new:
            return 0
        try:
            self.warm_up()
            self.warn_truncated(new)
            self.dense.add(embed(self._model, [c.text for c in new], batch_size, self.progress))
        except BaseException:
            self._ids.difference_update(c.id for c in new)
            raise
        self.chunks.extend(new)
        for c in new:
            info = self.sources.setdefault(c.source_id, {"sha256": None, "chunks": 0})
            info["chunks"] = info.get("chunks", 0) + 1
        self.bm25.build([c.text for c in self.chunks])
        return len(new)

    def truncated(self, chunks: Sequence[Chunk]) -> list[tuple[Chunk, int]]:
        """The chunks longer than the embedder's window, with their length in its tokens."""
        self.warm_up()
        if not chunks:
            return []
        ids = self._model.tokenizer([c.text for c in chunks], add_special_tokens=False)["input_ids"]
        limit = self.max_tokens
        return [(c, len(t)) for c, t in zip(chunks, ids) if len(t) > limit]

    def warn_truncated(self, chunks: Sequence[Chunk], shown: int = 20) -> None:
        """Log a warning naming each chunk the embedder reads only in part (the first ``shown``, then a count)."""
        cut = self.truncated(chunks)
        for c, n in cut[:shown]:
            logger.warning(
                "chunk %s:%d-%d has %d tokens; the embedder reads %d, the rest is not embedded",
                c.source_id, c.start, c.end, n, self.max_tokens,
            )  # fmt: skip
        if len(cut) > shown:
            logger.warning("... and %d more truncated chunks", len(cut) - shown)

    def remove(self, source_id: str) -> int:
        """Drop every chunk of one source; returns how many. ``SourceNotFoundError`` (naming close ids) if absent."""
        if source_id not in self.sources:
            import difflib

            close = difflib.get_close_matches(source_id, list(self.sources), n=3, cutoff=0.5)
            known = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise SourceNotFoundError(
                f"no source {source_id!r} in the index ({len(self.sources)} sources){known}", param="source_id"
            )
        return self.remove_sources([source_id])

    def remove_sources(self, source_ids: Iterable[str]) -> int:
        """Drop every chunk of these sources (absent ones are ignored); returns how many chunks went."""
        gone = set(source_ids)
        keep = np.array([c.source_id not in gone for c in self.chunks], dtype=bool)
        for sid in gone:
            self.sources.pop(sid, None)
        n = int((~keep).sum())
        if n == 0:
            return 0
        self.chunks = [c for c, k in zip(self.chunks, keep) if k]
        self._ids = {c.id for c in self.chunks}
        self.dense = self.dense.keep(keep)
        if self.chunks:
            self.bm25.build([c.text for c in self.chunks])
        else:
            self.bm25 = BM25Index(self.bm25.k1, self.bm25.b, self.bm25.method)
        return n

    def replace_sources(self, docs: dict[str, tuple[list[Chunk], dict]], batch_size: int = 64) -> int:
        """Make each source hold exactly the given chunks: ``{source_id: (chunks, info)}``, ``info`` being what
        ``sources`` keeps (``sha256``, ``type``, ...). Embeds first, so a failure leaves the retriever unchanged.
        Returns the number of chunks added."""
        new = [c for chunks, _ in docs.values() for c in chunks]
        for c in new:
            if not isinstance(c, Chunk) or c.source_id not in docs:
                raise ConfigError(f"chunk {c!r:.80} does not belong to the sources given", param="docs")
        self.warm_up()
        emb = embed(self._model, [c.text for c in new], batch_size, self.progress) if new else None
        self.warn_truncated(new)
        self.remove_sources(docs)
        if emb is not None and len(new):
            if self.dense is None:
                self.dense = DenseIndex(self._model.get_embedding_dimension(), self.factory)
            self.dense.add(emb)
            self.chunks.extend(new)
            self._ids.update(c.id for c in new)
            self.bm25.build([c.text for c in self.chunks])
        for sid, (chunks, info) in docs.items():
            if chunks:
                self.sources[sid] = {**info, "chunks": len(chunks)}
        return len(new)

    # -- search ----------------------------------------------------------------------------------
    def retrieve(self, question: str, k: int) -> list[ScoredChunk]:
        """The stage method (:class:`ragcore.stages.Retriever`): hybrid ``search(question, k)``."""
        return self.search(question, k)

    def search(self, query: str, k: int = 5, mode: str = "hybrid", min_score: float | None = None) -> list[ScoredChunk]:
        return self.search_many([query], k, mode, min_score=min_score)[0]

    def search_many(
        self,
        queries: Sequence[str],
        k: int = 5,
        mode: str = "hybrid",
        query_embeddings: np.ndarray | None = None,
        min_score: float | None = None,
    ) -> list[list[ScoredChunk]]:
        """Top ``k`` chunks per query. Each result keeps ``scores['bm25']`` (raw BM25), ``['dense']`` (cosine,
        in [-1, 1]) and ``['hybrid']`` (see ``fuse``).

        A query with no BM25 term (``C++``) is matched by the dense side alone (its BM25 scores are 0); in mode
        ``bm25`` it raises ``NoQueryTermsError``. ``min_score`` (default: the retriever's ``min_score``): drop
        results whose dense cosine is below it, so fewer than ``k`` (or none) may come back; not in mode ``bm25``.
        ``query_embeddings`` (one row per query, from ``embed_queries``) skips embedding the queries again.
        """
        if mode not in MODES:
            raise ConfigError(f"unknown retrieval mode {mode!r}; options: {', '.join(MODES)}", param="mode")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}", param="k")
        min_score = self.min_score if min_score is None else _check_min_score(min_score)
        if min_score is not None and mode == "bm25":
            raise ConfigError(
                f"min_score ({min_score}) is a floor on the dense cosine; mode 'bm25' has none", param="min_score"
            )
        for q in queries:
            if not isinstance(q, str) or not q.strip():
                raise EmptyQueryError(q)
            if mode == "bm25" and not self.bm25.has_terms(q):
                raise NoQueryTermsError(q)
        if not self.chunks:
            raise EmptyCorpusError("the index holds no documents; add some first (ragcore index PATH)")
        q_emb = query_embeddings
        if mode != "bm25" and q_emb is None:
            q_emb = self.embed_queries(queries)
        return [
            self._search_one(q, None if q_emb is None else q_emb[i], k, mode, min_score) for i, q in enumerate(queries)
        ]

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        self.warm_up()
        return embed(self._model, list(queries))

    def _search_one(
        self, query: str, q: np.ndarray | None, k: int, mode: str, min_score: float | None = None
    ) -> list[ScoredChunk]:
        bm_all = self.bm25.scores(query)
        if mode == "bm25":
            ids, _ = top_k(bm_all, k)
            return self._results(ids, {"bm25": bm_all[ids]})
        d_ids, d_scores = self.dense.search(q, max(k, self.pool) if mode == "hybrid" else k)
        if mode == "dense":
            keep = d_scores >= min_score if min_score is not None else np.ones(len(d_ids), bool)
            return self._results(d_ids[keep], {"bm25": bm_all[d_ids][keep], "dense": d_scores[keep]})
        if bm_all.any():
            b_ids, _ = top_k(bm_all, self.pool)
            cand = np.unique(np.concatenate([b_ids, d_ids]))
        else:  # no BM25 term matched: BM25 contributes nothing, not an arbitrary pool of zeros
            cand = np.unique(d_ids)
        bm, dn = bm_all[cand], self.dense.scores_for(q, cand)
        fused = fuse(bm, dn, self.fusion, self.dense_weight, self.rrf_k)
        order = np.argsort(-fused, kind="stable")
        if min_score is not None:
            order = order[dn[order] >= min_score]
        order = order[:k]
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
            with open(folder / "sources.json", "w", encoding="utf-8") as f:
                json.dump(self.sources, f, ensure_ascii=False, indent=0, sort_keys=True)

        meta = {
            "embedder": self.embedder_name,
            "dim": self.dense.dim,
            "factory": self.factory,
            "chunking": self.chunking,
            "bm25": {"k1": self.bm25.k1, "b": self.bm25.b, "method": self.bm25.method, "analyzer": ANALYZER},
            "counts": {
                "chunks": len(self.chunks),
                "embeddings": self.dense.n_docs,
                "bm25_docs": self.bm25.n_docs,
                "sources": len(self.sources),
            },
        }
        name = store.write_version(Path(path), write, meta)
        logger.info("saved %d chunks to %s/%s", len(self.chunks), path, name)
        return name

    @classmethod
    def load(cls, path: str | Path, version: str | None = None, verify: bool = True, **kwargs) -> HybridRetriever:
        """Load an index (default: its CURRENT version). ``kwargs`` set search options (fusion, pool, ...).

        Raises ``IndexNotFoundError``, ``IndexPathError`` (a file, not a folder), ``IndexCorruptError`` or
        ``IndexMismatchError``; reads schema 1 and 2 (see ``retrieval.store``).
        """
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
            if (folder / "sources.json").is_file():
                r.sources = json.loads((folder / "sources.json").read_text(encoding="utf-8"))
        except (ValueError, KeyError, TypeError, OSError, RuntimeError) as e:
            raise IndexCorruptError(f"index version {str(folder)!r} could not be read: {e}") from e
        counts = {"chunks": len(r.chunks), "embeddings": r.dense.n_docs, "bm25_docs": r.bm25.n_docs}
        if "sources" in m["counts"]:
            counts["sources"] = len(r.sources)
        if counts != m["counts"] or r.dense.index.ntotal != len(r.chunks) or r.dense.embeddings.shape[1] != m["dim"]:
            raise IndexCorruptError(
                f"index version {str(folder)!r} is inconsistent: {counts} vs manifest {m['counts']}"
            )
        r._ids = {c.id for c in r.chunks}
        r.chunking = m.get("chunking")
        if not (folder / "sources.json").is_file():  # schema 1: sources from the chunks, fingerprints unknown
            for c in r.chunks:
                info = r.sources.setdefault(c.source_id, {"sha256": None, "chunks": 0})
                info["chunks"] += 1
        if m["bm25"].get("analyzer") != ANALYZER:  # built by an older analyser: rebuild with today's (fast)
            r.bm25.build([c.text for c in r.chunks])
        return r

    def settings(self) -> dict:
        """What a re-index must agree with: embedder, FAISS factory, chunking."""
        return {"embedder": self.embedder_name, "factory": self.factory, "chunking": self.chunking}


def _check_min_score(x: float | None) -> float | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not -1.0 <= x <= 1.0:
        raise ConfigError(f"min_score is a cosine and must be in [-1, 1], got {x!r}", param="min_score")
    return float(x)
