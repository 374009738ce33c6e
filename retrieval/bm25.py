"""Sparse retrieval: BM25 through bm25s (stemming + English stop words)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from ragcore.errors import ConfigError, EmptyCorpusError

logger = logging.getLogger(__name__)

_TOKEN = re.compile(r"(?u)\b\w\w+\b")
METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")


def _bm25s():  # noqa: ANN202
    """bm25s, imported on first use. Its import sets its logger to DEBUG with its own handler (every build is logged
    to stderr), so the level is lowered after the import, not before."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


@lru_cache(maxsize=1)
def _stemmer():  # noqa: ANN202
    import Stemmer

    return Stemmer.Stemmer("english")


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def tokenize(text: str, stem: bool = True, stopwords: bool = True) -> list[str]:
    """Lower-case word tokens of two or more characters, English stop words dropped, Snowball-stemmed."""
    toks = _TOKEN.findall(text.lower())
    if stopwords:
        sw = _stopwords()
        toks = [t for t in toks if t not in sw]
    return _stemmer().stemWords(toks) if stem else toks


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` largest scores, best first (ties in index order)."""
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return top, scores[top]


class BM25Index:
    """BM25 over a list of texts. Scores of every document are available for fusion."""

    def __init__(self, k1: float = 1.5, b: float = 0.75, method: str = "lucene") -> None:
        if method not in METHODS:
            raise ConfigError(f"unknown BM25 method {method!r}; options: {', '.join(METHODS)}")
        if k1 < 0 or not 0 <= b <= 1:
            raise ConfigError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1!r}, b={b!r}")
        self.k1, self.b, self.method = k1, b, method
        self._bm25 = None
        self.n_docs = 0

    def build(self, texts: Sequence[str]) -> None:
        """(Re)build the index over all ``texts`` (bm25s has no incremental update; it is fast)."""
        bm25s = _bm25s()

        if not texts:
            raise EmptyCorpusError("cannot build a BM25 index over no documents")
        bm = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        bm.index([tokenize(t) for t in texts], show_progress=False)
        self._bm25, self.n_docs = bm, len(texts)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for ``query`` (float32, length ``n_docs``)."""
        if self._bm25 is None:
            raise EmptyCorpusError("the BM25 index is empty; add documents first")
        return np.asarray(self._bm25.get_scores(tokenize(query)), dtype=np.float32)

    def search(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (doc indices, scores), best first."""
        return top_k(self.scores(query), k)

    def save(self, folder: Path) -> None:
        self._bm25.save(str(folder), show_progress=False)

    @classmethod
    def load(cls, folder: Path, k1: float, b: float, method: str, n_docs: int) -> BM25Index:
        bm25s = _bm25s()

        idx = cls(k1=k1, b=b, method=method)
        idx._bm25 = bm25s.BM25.load(str(folder), allow_pickle=False, show_progress=False)
        idx.n_docs = n_docs
        return idx
