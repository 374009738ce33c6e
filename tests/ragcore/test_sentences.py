"""ragcore.sentences: lines without sentence-final punctuation skip pysbd and come out as pysbd would cut them."""

from __future__ import annotations

import re

import pytest

from ragcore import sentences


@pytest.mark.parametrize(
    "text",
    [
        '"4f9c": "a1b2",\n"77e0": "c3d4",\n' * 20,
        "Heading without a stop\n  indented words, commas; colons: and more\n\nA sentence. Another one!\n",
        "no newline at the end and no stop",
        "Dr. Who met Mr. Smith at 5 p.m. Then they left… Was it late? 「終わり。」",
    ],
)
def test_spans_equal_pysbd_on_every_block(text, monkeypatch):
    fast = sentences.split_sentences(text)
    monkeypatch.setattr(sentences, "TERMINALS", re.compile(""))  # every block through pysbd
    assert fast == sentences.split_sentences(text)


def test_a_line_without_a_stop_does_not_call_pysbd(monkeypatch):
    import pysbd

    calls = []
    segment = pysbd.Segmenter.segment
    monkeypatch.setattr(pysbd.Segmenter, "segment", lambda self, text: calls.append(text) or segment(self, text))
    text = '"k1": "v1",\n"k2": "v2",\nThe end. Really.'
    spans = sentences.split_sentences(text)
    assert [text[a:b] for a, b in spans] == ['"k1": "v1",', '"k2": "v2",', "The end.", "Really."]
    assert len(calls) == 1  # only the last line has a full stop
