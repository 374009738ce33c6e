"""LangChain adapters: the standard retriever tests (langchain-tests), a reranker as a document compressor, the
Pipeline as a Runnable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
from langchain_core.documents import Document
from langchain_tests.integration_tests import RetrieversIntegrationTests

from ragcore.pipeline import Pipeline
from ragcore.stages import Stage
from serve.langchain import PipelineRunnable, RagcoreCompressor, RagcoreRetriever


class TestRagcoreRetriever(RetrieversIntegrationTests):
    # the standard suite's async test, marked for pytest-asyncio (the same function: overriding is not allowed)
    test_ainvoke_returns_documents = pytest.mark.asyncio(RetrieversIntegrationTests.test_ainvoke_returns_documents)

    @pytest.fixture(autouse=True)
    def _index(self, index):
        self.index_path = index

    @property
    def retriever_constructor(self):
        return RagcoreRetriever

    @property
    def retriever_constructor_params(self):
        return {"index": self.index_path}

    @property
    def retriever_query_example(self) -> str:
        return "Which planet has rings?"


def test_documents_carry_spans_and_scores(index):
    docs = RagcoreRetriever(index=index, k=2).invoke("tallest volcano")
    m = docs[0].metadata
    assert m["source_id"] == "mars" and m["start"] == 0 and m["end"] == len(docs[0].page_content)
    assert set(m["scores"]) == {"bm25", "dense", "hybrid"} and m["relevance_score"] == m["scores"]["hybrid"]


@dataclass
class ShortestFirst(Stage):
    """A test reranker: shortest passage first, score = 1 / length."""

    name: ClassVar[str] = "shortest"

    def rerank(self, question, passages, lm):
        out = sorted(passages, key=lambda p: len(p.chunk.text))
        return [type(p)(p.chunk, {**p.scores, self.name: 1 / len(p.chunk.text)}, i + 1) for i, p in enumerate(out)]


def test_a_reranker_as_a_document_compressor_returns_scored_copies(index):
    docs = RagcoreRetriever(index=index, k=3).invoke("planet")
    out = RagcoreCompressor(stage=ShortestFirst()).compress_documents(docs, "planet")
    assert [len(d.page_content) for d in out] == sorted(len(d.page_content) for d in docs)
    assert [d.metadata["relevance_score"] for d in out] == [1 / len(d.page_content) for d in out]
    assert all(
        "relevance_score" in d.metadata and d.metadata["relevance_score"] != 1 / len(d.page_content) for d in docs
    )
    plain = RagcoreCompressor(stage=ShortestFirst()).compress_documents(
        [Document(page_content="ab"), Document(page_content="a")], "q"
    )
    assert [d.page_content for d in plain] == ["a", "ab"]


def test_the_pipeline_as_a_runnable(config, gen):
    r = PipelineRunnable(Pipeline.from_config(config, generator=gen))
    out = r.invoke({"question": "Which planet has the tallest volcano?"})
    assert out["answer"] and out["citations"] and out["flags"] == []
    assert "".join(r.stream("Which planet has the tallest volcano?")).strip() == out["answer"]
