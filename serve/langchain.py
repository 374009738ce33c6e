"""LangChain adapters (langchain-core): ragcore's stages inside a LangChain chain.

* :class:`RagcoreRetriever` - a ``BaseRetriever`` over a hybrid index (``k``; every score in the metadata);
* :class:`RagcoreCompressor` - a ``BaseDocumentCompressor`` over a reranker or a context compressor (copies of
  the documents with ``relevance_score``, in the stage's order);
* :class:`PipelineRunnable` - the whole Pipeline as a ``Runnable``: a question in, the answer's dict out
  (``stream`` yields the answer's text pieces).

A document's metadata carries what ragcore needs to rebuild its chunk: ``chunk_id``, ``source_id``, ``start``,
``end`` (character offsets into the source) and the retriever's ``scores``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import ConfigDict, Field

from ragcore.errors import ConfigError
from ragcore.events import TokenEvent, answer_dict
from ragcore.pipeline import Pipeline, load_retriever
from ragcore.registry import registry
from ragcore.types import Chunk, ScoredChunk

STAGE_KINDS = ("reranker", "context_compressor")


def to_document(p: ScoredChunk) -> Document:
    """A LangChain document of a scored chunk: its text, and its source span and scores in the metadata."""
    c = p.chunk
    meta = {**c.metadata, "chunk_id": c.id, "source_id": c.source_id, "start": c.start, "end": c.end}
    meta.update(scores=dict(p.scores), rank=p.rank, relevance_score=p.score)
    return Document(page_content=c.text, metadata=meta, id=c.id)


def to_scored(doc: Document, rank: int) -> ScoredChunk:
    """The scored chunk of a document (one from :func:`to_document` keeps its span, id and scores)."""
    m = doc.metadata
    start = int(m.get("start", 0))
    chunk = Chunk(
        doc.page_content,
        str(m.get("source_id", doc.id or f"doc{rank}")),
        start,
        int(m.get("end", start + len(doc.page_content))),
        {k: v for k, v in m.items() if k not in ("scores", "rank", "relevance_score")},
        str(m.get("chunk_id") or doc.id or ""),
    )
    return ScoredChunk(chunk, dict(m.get("scores") or {}), rank)


class RagcoreRetriever(BaseRetriever):
    """The hybrid retriever of a ragcore index as a LangChain retriever.

    Parameters
    ----------
    index:
        The index folder (``ragcore index`` writes it); loaded on construction.
    retriever:
        A ready ragcore retriever instead of ``index`` (anything with ``retrieve(question, k)``).
    k:
        Documents returned; ``invoke(query, k=...)`` overrides it per call.
    options:
        Search options for the loaded retriever (``min_score``, ``fusion``, ...).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: str | None = None
    retriever: Any = None
    k: int = Field(4, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)

    def model_post_init(self, context: Any) -> None:
        if self.retriever is None:
            if self.index is None:
                raise ConfigError("RagcoreRetriever needs an index folder or a ready retriever", param="index")
            self.retriever = load_retriever(self.index, **self.options)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None, **kwargs: Any
    ) -> list[Document]:
        return [to_document(p) for p in self.retriever.retrieve(query, self.k if k is None else k)]


class RagcoreCompressor(BaseDocumentCompressor):
    """A ragcore reranker or context compressor as a LangChain document compressor.

    Parameters
    ----------
    stage:
        The stage, or its spec string (``"attnrank(layer=12)"``), built in the registry of ``kind``.
    kind:
        ``reranker`` or ``context_compressor``.
    lm:
        The loaded :class:`ragcore.generator.Generator` the stage reads (attention-driven stages need it).

    Returns copies of the documents, in the stage's order, with ``relevance_score`` (the stage's score when it
    wrote one, else the score the document came with) and the stage's text for a context compressor.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    stage: Any
    kind: str = "reranker"
    lm: Any = None

    def model_post_init(self, context: Any) -> None:
        if self.kind not in STAGE_KINDS:
            raise ConfigError(f"kind must be one of {', '.join(STAGE_KINDS)}, got {self.kind!r}", param="kind")
        self.stage = registry(self.kind).build(self.stage)

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Any = None
    ) -> Sequence[Document]:
        passages = [to_scored(d, i + 1) for i, d in enumerate(documents)]
        if self.kind == "reranker":
            out = self.stage.rerank(query, passages, self.lm)
        else:
            out = self.stage.compress(query, passages, self.lm)
        docs = []
        for rank, p in enumerate(out, start=1):
            d = to_document(p)
            d.metadata["rank"] = rank
            d.metadata["relevance_score"] = float(p.scores.get(self.stage.name, p.score))
            docs.append(d)
        return docs


class PipelineRunnable(Runnable[Any, dict[str, Any]]):
    """A :class:`ragcore.pipeline.Pipeline` as a LangChain ``Runnable``.

    Input: a question (``str``) or a dict with ``question``. ``invoke`` returns the answer's dict (``answer``,
    ``citations``, ``flags``, ``passages``, ``stages``, as ``POST /v1/ask``); ``stream`` yields the answer's text
    pieces; ``ainvoke``/``astream`` run the work in a thread.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    @staticmethod
    def question(value: Any) -> str:
        q = value.get("question") if isinstance(value, dict) else value
        if not isinstance(q, str):
            raise ConfigError(f"input must be a question or a dict with 'question', got {value!r:.100}")
        return q

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> dict[str, Any]:
        return answer_dict(self.pipeline.ask(self.question(input)))

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> dict[str, Any]:
        return answer_dict(await self.pipeline.aask(self.question(input)))

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[str]:
        for ev in self.pipeline.stream(self.question(input)):
            if isinstance(ev, TokenEvent):
                yield ev.text

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[str]:
        async for ev in self.pipeline.astream(self.question(input)):
            if isinstance(ev, TokenEvent):
                yield ev.text
