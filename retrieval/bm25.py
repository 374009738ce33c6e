"""Sparse retrieval: BM25 through bm25s.

The analyser, per language (``tokenize``):

* English and other space-separated scripts: lower-cased words of two or more characters, English stop words
  dropped, Snowball English stemming (other languages get their words matched, unstemmed in effect);
* Chinese, Japanese (kanji and kana) and Korean (hangul): overlapping character bigrams of each run of those
  characters (a one-character run is one token), as Lucene's CJK analyser does; no stop words, no stemming;
* scripts written without spaces that are not CJK (Thai, Lao, Khmer, Myanmar): one token per unspaced run, so
  BM25 matches whole runs only; dense retrieval still matches them by meaning.

A query with no token (``C++``, ``???``, only stop words) gets no BM25 score: ``scores`` returns zeros and
``has_terms`` is false.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from ragcore.errors import ConfigError, EmptyCorpusError

logger = logging.getLogger(__name__)

_TOKEN = re.compile(r"\w+")
_CJK = (
    "\u1100-\u11ff\u2e80-\u2fdf\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f"
)
_CJK_SPLIT = re.compile(f"([{_CJK}]+)")
_IS_CJK = re.compile(f"[{_CJK}]")
ANALYZER = "words-en-stem+cjk-bigrams"  # recorded in the index manifest
METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")


def _bm25s():  # noqa: ANN202
    """bm25s, imported on first use. Its import sets its logger to DEBUG with its own handler (every build is logged
    to stderr), so the level is lowered after the import, not before.

    Where JAX is installed and not yet imported, bm25s is imported with JAX hidden: its ``selection`` module would
    otherwise import JAX and run one top-k at import, which starts JAX's GPU backend and, by JAX's default, reserves
    75% of the GPU's memory in every process that builds or loads an index (seen on an H200: 105 GiB per process).
    This index only asks bm25s for scores (``get_scores``), never for its JAX top-k; JAX itself is untouched and
    can be imported afterwards as usual."""
    import sys

    if "bm25s" in sys.modules or "jax" in sys.modules:
        import bm25s
    else:
        hidden = {m: sys.modules.get(m) for m in ("jax", "jax.lax")}
        sys.modules.update(dict.fromkeys(hidden))  # None: `import jax` raises ImportError inside bm25s only
        try:
            import bm25s
        finally:
            for m, mod in hidden.items():
                if mod is None:
                    sys.modules.pop(m, None)
                else:  # pragma: no cover - not reachable: jax was not imported
                    sys.modules[m] = mod

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


def _cjk_grams(run: str) -> list[str]:
    return [run] if len(run) == 1 else [run[i : i + 2] for i in range(len(run) - 1)]


def tokenize(text: str, stem: bool = True, stopwords: bool = True) -> list[str]:
    """BM25 tokens of ``text`` (see the module docstring for the analyser per language)."""
    toks: list[str] = []
    cjk: list[str] = []
    for word in _TOKEN.findall(text.lower()):
        if not _IS_CJK.search(word):
            if len(word) > 1:
                toks.append(word)
            continue
        for part in _CJK_SPLIT.split(word):
            if not part:
                continue
            if _IS_CJK.match(part):
                cjk += _cjk_grams(part)
            elif len(part) > 1:
                toks.append(part)
    if stopwords:
        sw = _stopwords()
        toks = [t for t in toks if t not in sw]
    if stem:
        toks = _stemmer().stemWords(toks)
    return toks + cjk


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
        corpus = [tokenize(t) for t in texts]
        if not any(corpus):  # bm25s cannot build an empty vocabulary; a token no query can hold stands in
            corpus[0] = ["\0"]
        bm.index(corpus, show_progress=False)
        self._bm25, self.n_docs = bm, len(texts)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for ``query`` (float32, length ``n_docs``)."""
        if self._bm25 is None:
            raise EmptyCorpusError("the BM25 index is empty; add documents first")
        toks = tokenize(query)
        if not toks:
            return np.zeros(self.n_docs, dtype=np.float32)
        return np.asarray(self._bm25.get_scores(toks), dtype=np.float32)

    @staticmethod
    def has_terms(query: str) -> bool:
        """Whether ``query`` has any token BM25 can match (``C++`` and ``???`` have none)."""
        return bool(tokenize(query))

    def search(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (doc indices, scores), best first."""
        return top_k(self.scores(query), k)

    def save(self, folder: Path) -> None:
        self._bm25.save(str(folder), show_progress=False)

    @classmethod
    def load(cls, folder: Path, k1: float, b: float, method: str, n_docs: int, **_: object) -> BM25Index:
        bm25s = _bm25s()

        idx = cls(k1=k1, b=b, method=method)
        idx._bm25 = bm25s.BM25.load(str(folder), allow_pickle=False, show_progress=False)
        idx.n_docs = n_docs
        return idx
