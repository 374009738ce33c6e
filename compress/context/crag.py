"""CRAG, clustered retrieval-augmented generation (Akesson & Santos 2024, arXiv 2406.00029): fewer tokens for the
generator by clustering the retrieved chunks and condensing each cluster.

The chunks are embedded (``embedder``, a sentence-transformers model) and clustered by k-means (scikit-learn); with
``k=None`` the number of clusters follows the rule of thumb ``k = ceil(sqrt(n / 2))`` for ``n`` chunks (3 for the
top 10). Each cluster is condensed:

* ``mode="extractive"`` (default): the ``sentences`` sentences of its chunks (or, with ``ratio``, all but that
  share of them, so that a large cluster keeps more) with the highest cosine to the cluster's centre plus cosine
  to the question; each comes out as a passage holding its source's exact text and
  character span (adjacent sentences of one chunk are joined), with ``metadata["cluster"]`` and
  ``metadata["parent"]`` (the chunk id it came from);
* ``mode="abstractive"``: the generator summarises the cluster's chunks in at most ``summary_tokens`` tokens; the
  passage's text is the summary (not text of the input), ``metadata["sources"]`` lists the chunk ids and character
  spans it summarises.

Clusters come out in the order of their best-ranked chunk. Results: docs/RESULTS.md, sections ``crag-titles-gpu``
(``k=1, ratio=0.65`` with titles, chosen in ``crag-titles-dev-gpu``), and before titles ``crag-gpu`` (``sentences=4``)
and ``crag-ratio-gpu`` (``k=1, ratio=0.7``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ragcore.errors import ConfigError
from ragcore.sentences import split_sentences
from ragcore.stages import Stage, option
from ragcore.types import Chunk, ScoredChunk

SUMMARY_SYSTEM = (
    "Summarise the passages in a few sentences, keeping every name, date and number that may answer the question."
)


@functools.cache
def _embedder(name: str) -> Any:
    from ragcore.models import load_embedder

    return load_embedder(name, "cpu")


def _embed(name: str, texts: list[str]) -> np.ndarray:
    return np.asarray(_embedder(name).encode(texts, normalize_embeddings=True, show_progress_bar=False))


SENTENCES = 2  # extractive: sentences kept per cluster when neither ``sentences`` nor ``ratio`` is given


def default_k(n: int) -> int:
    """The number of clusters for ``n`` chunks: ``ceil(sqrt(n / 2))``, at most ``n``."""
    return max(1, min(n, math.ceil(math.sqrt(n / 2))))


@dataclass
class CRAG(Stage):
    """Clustered retrieval (arXiv 2406.00029): k-means over chunk embeddings, each cluster condensed.

    Parameters
    ----------
    k : int or None
        Clusters; None: ``ceil(sqrt(n / 2))`` for ``n`` passages.
    sentences : int or None
        Extractive: sentences kept per cluster (None: 2, unless ``ratio`` is given).
    ratio : float or None
        Extractive: the share of each cluster's sentences removed, in (0, 1) (kvpress's ``compression_ratio``
        convention); each cluster keeps ``ceil((1 - ratio) * n)`` of its ``n`` sentences. Excludes ``sentences``
        and ``mode="abstractive"`` (``ConfigError``).
    mode : str
        ``"extractive"`` (text of the input) or ``"abstractive"`` (the generator's summary).
    embedder : str
        Sentence-transformers model of the embeddings (a bundled name such as ``minilm``, or a folder).
    summary_tokens : int
        Abstractive: the summary's length limit in tokens.
    titles : bool
        Extractive: embed each sentence with its passage's ``metadata["title"]`` in front (``"title: sentence"``,
        as DPR encodes a passage as its title and text, https://arxiv.org/abs/2004.04906), since a sentence on its
        own often names its subject only by a pronoun or not at all. The kept text is the sentence alone. Chunks
        without a title (plain text, Markdown and PDF files as ``ragcore index`` reads them; HTML pages have one)
        are embedded as they are.
        Measured in crag-titles-dev-gpu: at ``k=1, ratio=0.7`` the gold answer stays in the condensed passages for
        95.6% of the development questions with titles, 84.5% without.
    seed : int
        Seed of k-means.
    """

    name: ClassVar[str] = "crag"
    k: int | None = option(None, kind=int, minimum=1)
    sentences: int | None = option(None, kind=int, minimum=1)
    ratio: float | None = option(None, kind=float, low=0.0, high=1.0, low_open=True, high_open=True)
    mode: str = option("extractive", choices=("extractive", "abstractive"))
    embedder: str = option("minilm")
    summary_tokens: int = option(96, minimum=8)
    titles: bool = option(True)
    seed: int = option(0, minimum=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ratio is not None and self.sentences is not None:
            raise ConfigError(
                f"crag: ratio={self.ratio!r} and sentences={self.sentences!r} exclude each other (give one)",
                param="ratio",
            )
        if self.ratio is not None and self.mode != "extractive":
            raise ConfigError(f"crag: ratio={self.ratio!r} applies to mode='extractive' only", param="ratio")

    def warm_up(self) -> None:
        _embedder(self.embedder)

    def output_budget(self, passages: Sequence[ScoredChunk], lm: Any) -> int:
        """The most tokens (of ``lm``'s tokenizer, sentence by sentence) the extractive output holds: those of the
        ``k * sentences`` longest sentences of the input (with ``ratio``: of the ``floor((1 - ratio) * n) + k``
        longest of its ``n``, since each cluster rounds its share up)."""
        texts = [p.chunk.text[a:b] for p in passages for a, b in split_sentences(p.chunk.text)]
        lens = sorted((len(x) for x in lm.tokenizer(texts, add_special_tokens=False)["input_ids"]), reverse=True)
        k = min(self.k or default_k(len(passages)), len(passages))
        most = k * self.kept(0) if self.ratio is None else math.floor((1 - self.ratio) * len(lens)) + k
        return sum(lens[:most])

    def kept(self, n: int) -> int:
        """Sentences a cluster of ``n`` sentences keeps."""
        if self.ratio is None:
            return self.sentences or SENTENCES
        return max(1, math.ceil(round((1 - self.ratio) * n, 9)))  # rounded: (1 - 0.7) * 10 is 3.0000000000000004

    def clusters(self, passages: Sequence[ScoredChunk]) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Cluster label of every passage, the centres (k, d) and the passages' embeddings (n, d)."""
        from sklearn.cluster import KMeans

        emb = _embed(self.embedder, [p.chunk.text for p in passages])
        k = min(self.k or default_k(len(passages)), len(passages))
        if k == 1:
            return [0] * len(passages), emb.mean(0, keepdims=True), emb
        km = KMeans(n_clusters=k, n_init=4, random_state=self.seed).fit(emb)
        return [int(x) for x in km.labels_], km.cluster_centers_, emb

    def compress(self, question: str, passages: Sequence[ScoredChunk], lm: Any) -> list[ScoredChunk]:
        if not passages:
            return []
        labels, centres, _ = self.clusters(passages)
        order = list(dict.fromkeys(labels))  # clusters by their best-ranked chunk
        q = _embed(self.embedder, [question])[0]
        out: list[ScoredChunk] = []
        for c in order:
            members = [i for i, lab in enumerate(labels) if lab == c]
            if self.mode == "abstractive":
                out.append(self._summary(question, [passages[i] for i in members], c, lm))
            else:
                out.extend(self._extract(passages, members, centres[c], q, c))
        return out

    def _extract(
        self, passages: Sequence[ScoredChunk], members: list[int], centre: np.ndarray, q: np.ndarray, c: int
    ) -> list[ScoredChunk]:
        sents = [(i, a, b) for i in members for a, b in split_sentences(passages[i].chunk.text)]
        if not sents:
            return []
        emb = _embed(self.embedder, [self.sentence_text(passages[i].chunk, a, b) for i, a, b in sents])
        centre = centre / max(float(np.linalg.norm(centre)), 1e-12)
        score = emb @ centre + emb @ q
        keep = sorted(np.argsort(-score, kind="stable")[: self.kept(len(sents))].tolist())
        out: list[ScoredChunk] = []
        run: list[int] = []
        for j in [*keep, None]:
            if run and (j is None or sents[j][0] != sents[run[-1]][0] or j != run[-1] + 1):
                i, a, b = sents[run[0]][0], sents[run[0]][1], sents[run[-1]][2]
                src = passages[i]
                ch = src.chunk
                meta = dict(ch.metadata, cluster=c, parent=ch.id)
                chunk = Chunk(ch.text[a:b], ch.source_id, ch.start + a, ch.start + b, meta)
                out.append(ScoredChunk(chunk, {**src.scores, self.name: float(max(score[r] for r in run))}, src.rank))
                run = []
            if j is not None:
                run.append(j)
        return out

    def sentence_text(self, chunk: Chunk, start: int, end: int) -> str:
        """What is embedded for the sentence ``chunk.text[start:end]``: with ``titles``, the chunk's title in front
        (unless the sentence already starts with it)."""
        text = chunk.text[start:end]
        title = str(chunk.metadata.get("title") or "").strip() if self.titles else ""
        return f"{title}: {text}" if title and not text.startswith(title) else text

    def _summary(self, question: str, members: list[ScoredChunk], c: int, lm: Any) -> ScoredChunk:
        from ragcore.generator import GenerationConfig

        g = lm.generate(
            lm.prompt(f"Summarise these passages for the question: {question}", members, system=SUMMARY_SYSTEM),
            config=GenerationConfig(max_new_tokens=self.summary_tokens),
        )
        sources = [
            {"chunk_id": p.chunk.id, "source_id": p.chunk.source_id, "start": p.chunk.start, "end": p.chunk.end}
            for p in members
        ]
        chunk = Chunk(g.text, f"crag:cluster{c}", metadata={"cluster": c, "abstractive": True, "sources": sources})
        return ScoredChunk(chunk, {self.name: float(len(members))}, members[0].rank)
