"""Sentences with their character spans, by pysbd (rule-based sentence boundary detection).

pysbd's time grows faster than linearly with the text's length, so the text is first cut into blocks at line
breaks and, for lines over ``BLOCK_CHARS`` characters, after the last ". " (or space) before that size; pysbd then
splits each block. Line breaks always end a sentence (records, lists and headings are one line each), and a block
without any of pysbd's sentence-final characters (:data:`TERMINALS`) is one sentence as it stands, pysbd not called
(key-value records split about 100x faster; the spans are pysbd's: tests/ragcore/test_sentences.py).
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

BLOCK_CHARS = 4000
# where pysbd may end a sentence (also the CJK forms): a block holding none of these is one sentence, without pysbd
TERMINALS = re.compile(r"[.!?\u2026\u3002\uff01\uff1f\uff0e]")


class _Whole(NamedTuple):
    start: int
    end: int


@functools.cache
def _segmenter():  # noqa: ANN202 - pysbd has no type hints
    import pysbd

    return pysbd.Segmenter(language="en", clean=False, char_span=True)


def _blocks(text: str, size: int = BLOCK_CHARS) -> list[tuple[int, int]]:
    out = []
    pos = 0
    for line in text.splitlines(keepends=True):
        a, b = pos, pos + len(line)
        pos = b
        while b - a > size:
            cut = text.rfind(". ", a, a + size)
            cut = cut + 2 if cut > a else text.rfind(" ", a, a + size) + 1
            if cut <= a:
                cut = a + size
            out.append((a, cut))
            a = cut
        if b > a:
            out.append((a, b))
    return out


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of the sentences of ``text``, in order, covering every non-blank character;
    spans leave out surrounding whitespace."""
    spans = []
    for a, b in _blocks(text):
        block = text[a:b]
        if not block.strip():
            continue
        # a block without sentence-final punctuation is one sentence (a record, a heading): pysbd is not needed
        pieces = _segmenter().segment(block) if TERMINALS.search(block) else [_Whole(0, len(block))]
        for s in pieces:
            s0, s1 = a + s.start, a + s.end
            while s0 < s1 and text[s0].isspace():
                s0 += 1
            while s1 > s0 and text[s1 - 1].isspace():
                s1 -= 1
            if s1 > s0:
                spans.append((s0, s1))
    return spans
