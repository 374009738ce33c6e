"""The context compressor conformance suite: every registered compressor passes it, and none is named here.

Each output passage holds text of the input with its true source span (the source's text at that span is the
passage's text), the output stays within the compressor's declared ``output_budget`` (tokens), nothing comes back
for nothing, the input is left alone, and the label rebuilds the compressor. Run on a tiny random-init model with
the SmolLM2 tokenizer, on inputs longer than one InfiniRetri segment.
"""

from __future__ import annotations

import random

import pytest

from compress.context import CONTEXT_COMPRESSORS
from ragcore.types import Chunk, ScoredChunk
from tests.helpers import tiny_generator, tiny_model

NAMES = CONTEXT_COMPRESSORS.names()
SMALL = {"segment": 64, "carry": 48, "top_k": 8}  # options that exist are applied, so the input spans segments
WORDS = [
    "the",
    "river",
    "city",
    "bridge",
    "was",
    "built",
    "in",
    "1889",
    "by",
    "engineers",
    "who",
    "crossed",
    "a",
    "long",
    "valley",
    "near",
    "the",
    "harbour",
]


@pytest.fixture(scope="module")
def lm(_smol_session):
    return tiny_generator(tiny_model(vocab=len(_smol_session.tokenizer)), _smol_session.tokenizer)


def text(seed: int, sentences: int) -> str:
    rng = random.Random(seed)
    out = []
    for i in range(sentences):
        s = " ".join(rng.choices(WORDS, k=rng.randint(4, 14))).capitalize()
        out.append(f"{s} {i}." + ("\n" if rng.random() < 0.2 else " "))
    return "".join(out)


def inputs(n: int = 6) -> list[ScoredChunk]:
    return [
        ScoredChunk(Chunk(text(i, 3 + 2 * i), f"doc{i}", start=100 * i), {"hybrid": 1 - i / 10}, i + 1)
        for i in range(n)
    ]


def build(name: str):
    stage = CONTEXT_COMPRESSORS.build(name)
    valid = {k: v for k, v in SMALL.items() if hasattr(stage, k)}
    return CONTEXT_COMPRESSORS.build(name, **valid)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 3, 6])
def test_text_of_the_input_with_true_spans_within_budget(lm, name, n):
    ps = inputs(n)
    before = [p.to_dict() for p in ps]
    stage = build(name)
    out = stage.compress("When was the bridge built?", ps, lm)
    assert out, "a non-empty input gives some text"
    src = {p.chunk.source_id: p.chunk for p in ps}
    for p in out:
        c = src[p.chunk.source_id]
        assert c.start <= p.chunk.start < p.chunk.end <= c.end
        assert c.text[p.chunk.start - c.start : p.chunk.end - c.start] == p.chunk.text
        assert name in p.scores
    tokens = sum(len(lm.tokenizer(p.chunk.text, add_special_tokens=False)["input_ids"]) for p in out)
    assert tokens <= stage.output_budget(ps, lm) + 2 * len(out)  # joining sentences may merge a boundary token
    assert [p.to_dict() for p in ps] == before


@pytest.mark.parametrize("name", NAMES)
def test_nothing_in_nothing_out_and_label(lm, name):
    stage = build(name)
    assert stage.compress("q?", [], lm) == []
    assert CONTEXT_COMPRESSORS.build(stage.label) == stage
