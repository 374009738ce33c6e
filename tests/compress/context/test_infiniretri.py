"""Sentences come from pysbd with true spans, every non-blank character once (InfiniRetri's and CRAG's units);
InfiniRetri's forward stopped at the layer it reads keeps every result of the whole forward."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from compress.context import CONTEXT_COMPRESSORS
from compress.context.infiniretri import InfiniRetri
from ragcore.attention import attention_to_spans
from ragcore.sentences import split_sentences
from tests.compress.context.test_conformance import inputs
from tests.helpers import tiny_generator, tiny_model


def test_sentences_cover_the_text_with_true_spans():
    t = 'Mr. Smith went to Washington. He left at 5 p.m. today.\n{"a": "b",\n"c": "d"}\n' * 3
    spans = split_sentences(t)
    assert [t[a:b] for a, b in spans[:4]] == [
        "Mr. Smith went to Washington.",
        "He left at 5 p.m. today.",
        '{"a": "b",',
        '"c": "d"}',
    ]
    assert "".join("".join(t[a:b].split()) for a, b in spans) == "".join(t.split())  # every non-blank char, in order
    assert all(t[a:b] == t[a:b].strip() for a, b in spans)


class WholeForward(InfiniRetri):
    """InfiniRetri as it was before issue 14: the whole forward, every layer's hidden states, one read."""

    @staticmethod
    def token_scores(model, input_ids, spans, layer):
        return attention_to_spans(model, input_ids, spans, rows="question", layers=[layer]).tokens[0].sum(0)


def _result(stage, lm):
    out = stage.compress("When was the bridge built?", inputs(4), lm)
    return [(p.chunk.text, p.chunk.source_id, p.chunk.start, p.chunk.end, p.scores["infiniretri"]) for p in out]


@pytest.mark.parametrize("layer", [18, -1])
def test_stopping_at_the_read_layer_changes_nothing_smollm2(smol, one_thread, layer):
    """On SmolLM2 (30 layers) over several windows: the same passages, spans and scores, exactly."""
    opts = dict(segment=96, carry=48, top_k=8, layer=layer)
    got = _result(CONTEXT_COMPRESSORS.build("infiniretri", **opts), smol)
    assert got and got == _result(WholeForward(**opts), smol)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_stopping_at_the_read_layer_changes_nothing_tiny(_smol_session, kind):
    lm = tiny_generator(tiny_model(kind, layers=3, vocab=len(_smol_session.tokenizer)), _smol_session.tokenizer)
    for layer in (0, 1, -1):
        opts = dict(segment=64, carry=48, top_k=8, layer=layer)
        got = _result(InfiniRetri(**opts), lm)
        assert got and got == _result(WholeForward(**opts), lm)
    with torch.inference_mode():
        ids = torch.randint(0, 100, (1, 20))
        x = InfiniRetri.token_scores(lm.model, ids, {"question": (15, 20)}, 1)
    assert x.shape == (20,) and torch.allclose(x.sum(), torch.tensor(4.0))  # 4 heads, each row sums to 1


def test_window_tokens_from_the_prompts_offsets_equal_a_second_tokenization(_smol_session, monkeypatch):
    """The window reads its prompt's offset mapping; a prompt without one is tokenized again: same result."""
    lm = tiny_generator(tiny_model("qwen2", layers=2, vocab=len(_smol_session.tokenizer)), _smol_session.tokenizer)
    opts = dict(segment=64, carry=48, top_k=8)
    p = lm.prompt("When was the bridge built?", inputs(2))
    assert len(p.offsets) == len(p) and all(0 <= a <= b <= len(p.text) for a, b in p.offsets)
    got = _result(InfiniRetri(**opts), lm)
    build = lm.prompt
    monkeypatch.setattr(lm, "prompt", lambda *a, **k: dataclasses.replace(build(*a, **k), offsets=None))
    assert got and got == _result(InfiniRetri(**opts), lm)
