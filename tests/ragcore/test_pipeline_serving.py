"""Pipeline.stream / ask_batch / aask / astream / add_documents / remove_source with the real SmolLM2."""

from __future__ import annotations

import asyncio

import pytest

from ragcore.errors import ConfigError, SourceNotFoundError
from ragcore.generator import GenerationConfig
from ragcore.pipeline import Pipeline
from retrieval.indexer import document, ingest
from tests.conftest import DOCS

QS = ["Which planet has the tallest volcano?", "What causes ocean tides on Earth?"]


@pytest.fixture
def pipe(tmp_path, smol):
    ingest(tmp_path / "ix", [document(s, t) for s, t in DOCS.items()])
    return Pipeline(tmp_path / "ix", smol, k=2, config=GenerationConfig(max_new_tokens=6))


def test_stream_batch_and_async_give_the_answers_of_ask(pipe):
    asked = [pipe.ask(q) for q in QS]
    evs = list(pipe.stream(QS[0]))
    assert [e.type for e in evs][0] == "retrieval" and evs[-1].type == "done"
    assert evs[-1].answer.text == asked[0].text and evs[-1].answer.citations == asked[0].citations
    assert [a.text for a in pipe.ask_batch(QS)] == [a.text for a in asked]

    async def both():
        a = await pipe.aask(QS[1])
        events = [e async for e in pipe.astream(QS[1])]
        return a, events

    a, events = asyncio.run(both())
    assert a.text == asked[1].text and events[-1].answer.text == asked[1].text


def test_documents_are_added_and_removed_in_new_versions(pipe):
    rep = pipe.add_documents([{"source_id": "pluto", "text": "Pluto is a dwarf planet in the Kuiper belt."}])
    assert rep.written and rep.new == ["pluto"]
    assert pipe.retrieve("dwarf planet Kuiper belt")[0].chunk.source_id == "pluto"
    assert not pipe.add_documents(
        [{"source_id": "pluto", "text": "Pluto is a dwarf planet in the Kuiper belt."}]
    ).written
    pipe.remove_source("pluto")
    assert "pluto" not in {p.chunk.source_id for p in pipe.retrieve("dwarf planet Kuiper belt")}
    with pytest.raises(SourceNotFoundError, match="no source 'pluto'"):
        pipe.remove_source("pluto")
    with pytest.raises(ConfigError, match="give its text or its file's bytes"):
        pipe.add_documents([{"source_id": "x"}])


def test_a_ready_retriever_has_no_index_to_write(retriever, smol):
    with pytest.raises(ConfigError, match="not loaded from an index folder"):
        Pipeline(retriever, smol).add_documents([{"source_id": "a", "text": "b"}])
