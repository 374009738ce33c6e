"""Sentences come from pysbd with true spans, every non-blank character once (InfiniRetri's and CRAG's units)."""

from __future__ import annotations

from ragcore.sentences import split_sentences


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
