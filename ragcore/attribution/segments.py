"""Segments of a context (passages, sentences or word windows) and of an answer (sentences), with their
character spans, and prompts rebuilt from a subset of the context's segments.

Sentences come from pysbd (rule-based, with character spans; :mod:`ragcore.sentences`); a word window is ``words`` whitespace-separated
words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ragcore.errors import ConfigError
from ragcore.sentences import split_sentences
from ragcore.types import Chunk

if TYPE_CHECKING:
    from ragcore.generator import Generator
    from ragcore.prompt import Prompt

UNITS = ("sentence", "passage", "words")
_QUESTION = re.compile(r"Question: (.*)\nAnswer:", re.S)


@dataclass(frozen=True)
class Segment:
    """A piece of one passage: ``passage`` is its 0-based index in the prompt, [``start``, ``end``) the
    characters of ``text`` in the passage's chunk text (add ``chunk.start`` for the source offset)."""

    passage: int
    start: int
    end: int
    text: str


def sentences(text: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of the sentences of ``text`` (pysbd, through :mod:`ragcore.sentences`)."""
    return split_sentences(text)


def word_windows(text: str, words: int) -> list[tuple[int, int]]:
    """Character spans of consecutive windows of ``words`` words."""
    bounds = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    return [(bounds[i][0], bounds[min(i + words, len(bounds)) - 1][1]) for i in range(0, len(bounds), words)]


def split(passages: Sequence[Chunk], unit: str = "sentence", words: int = 50) -> list[Segment]:
    """The segments of ``passages`` in prompt order: whole passages, pysbd sentences, or windows of ``words``
    words. Every passage with text yields at least one segment."""
    if unit not in UNITS:
        raise ConfigError(f"unit must be one of {', '.join(map(repr, UNITS))}, got {unit!r}")
    out = []
    for i, c in enumerate(passages):
        if unit == "passage":
            spans = [(0, len(c.text))] if c.text.strip() else []
        elif unit == "sentence":
            spans = sentences(c.text)
        else:
            spans = word_windows(c.text, words)
        out += [Segment(i, a, b, c.text[a:b]) for a, b in spans]
    return out


def question_of(prompt: Prompt) -> str:
    """The question of ``prompt`` (its field, or read back from the prompt's text)."""
    if prompt.question:
        return prompt.question
    m = None
    for m in _QUESTION.finditer(prompt.text):  # noqa: B007 - the last match is the user's question
        pass
    if m is None:
        raise ConfigError("cannot find the question in the prompt to trace; build it with Generator.prompt")
    return m.group(1).strip()


@dataclass
class Rebuilt:
    """A prompt holding only some segments, and for each of its tokens the segment it belongs to (-1: none)."""

    prompt: Prompt
    token_segment: np.ndarray  # (T,) int


def rebuild(lm: Generator, prompt: Prompt, segments: Sequence[Segment], keep: np.ndarray) -> Rebuilt:
    """The prompt of ``prompt``'s question and the kept ``segments`` (``keep``: a bool per segment), in their
    order; the kept segments of one passage are joined by a space, a passage with none left out. Keeping every
    segment gives ``prompt`` itself."""
    return rebuild_many(lm, prompt, segments, [keep])[0]


def rebuild_many(
    lm: Generator, prompt: Prompt, segments: Sequence[Segment], keeps: Sequence[np.ndarray]
) -> list[Rebuilt]:
    """:func:`rebuild` for each of ``keeps``, the prompts tokenised together as one batch
    (:meth:`ragcore.generator.Generator.prompts`)."""
    lm.warm_up()
    out: list[Rebuilt | None] = [None] * len(keeps)
    requests, layouts, where = [], [], []
    for i, keep in enumerate(keeps):
        if keep.all():
            layout: list[list[tuple[int, int, int]]] = [[] for _ in prompt.passages]
            for j, s in enumerate(segments):
                layout[s.passage].append((j, s.start, s.end))
            out[i] = Rebuilt(prompt, token_segments(lm, prompt, layout))
            continue
        by_passage: dict[int, list[int]] = {}
        for j in np.flatnonzero(keep):
            by_passage.setdefault(segments[j].passage, []).append(int(j))
        chunks, layout = [], []  # layout: per new chunk, (segment index, start, end) in its text
        for p, idx in sorted(by_passage.items()):
            src = prompt.passages[p]
            text, spans = "", []
            for j in idx:
                if text:
                    text += " "
                spans.append((j, len(text), len(text) + len(segments[j].text)))
                text += segments[j].text
            chunks.append(Chunk(text, src.source_id, metadata=dict(src.metadata)))
            layout.append(spans)
        requests.append((question_of(prompt), chunks, prompt.system, prompt.answer_prefix or None))
        layouts.append(layout)
        where.append(i)
    for i, new, layout in zip(where, lm.prompts(requests) if requests else [], layouts):
        out[i] = Rebuilt(new, token_segments(lm, new, layout))
    return out  # type: ignore[return-value]  # every slot filled above


def token_segments(lm: Generator, prompt: Prompt, layout: list[list[tuple[int, int, int]]]) -> np.ndarray:
    """For each token of ``prompt``, the index of the segment its characters fall in (-1 outside any)."""
    offsets = prompt.offsets
    if offsets is None:  # a prompt builder that kept no offset mapping
        offsets = lm.tokenizer(prompt.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    owner = np.full(len(offsets), -1, dtype=np.int64)
    pos = 0
    for chunk, spans in zip(prompt.passages, layout):
        p0 = prompt.text.index(chunk.text, pos)
        for j, a, b in spans:
            hit = (offsets[:, 0] < p0 + b) & (offsets[:, 1] > p0 + a)
            owner[hit] = j
        pos = p0 + len(chunk.text)
    return owner


def answer_sentences(lm: Generator, token_ids: Sequence[int], text: str) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The sentences of the answer ``text`` (character spans) and, for each answer token, its sentence."""
    spans = sentences(text) or ([(0, len(text))] if text else [])
    raw = lm.tokenizer.decode(list(token_ids), skip_special_tokens=True)
    lead = len(raw) - len(raw.lstrip())
    owner = np.zeros(len(token_ids), dtype=np.int64)
    for t in range(len(token_ids)):
        before = len(lm.tokenizer.decode(list(token_ids[:t]), skip_special_tokens=True)) - lead
        owner[t] = next((i for i, (a, b) in enumerate(spans) if before < b), max(len(spans) - 1, 0))
    return spans, owner
