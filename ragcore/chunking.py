"""Split strings and documents into passages that keep character offsets into the source.

Every chunk's text is exactly ``source[chunk.start:chunk.end]``, where the source is the text as stored (a CRLF
file keeps its ``\\r\\n``; see ``ragcore.documents``). Sizes are measured by a ``Sizer``: characters (``max_chars``)
or the embedder's own tokens (``TokenSizer``, what ``ragcore index`` uses, so that no chunk is cut short by the
embedder's window). Paragraphs are split into sentences (``.!?`` and the CJK ``。！？``), sentences are merged
greedily up to the size, a sentence longer than the size is cut (at a space where there is one), and consecutive
chunks may share ``overlap`` units of whole trailing sentences. No chunk is without word characters: a file of
``---`` and ``* * *`` gives no chunks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ragcore.documents import TEXT_SUFFIXES, Document, load_document, scan
from ragcore.errors import ConfigError
from ragcore.types import Chunk

__all__ = ["TEXT_SUFFIXES", "CharSizer", "TokenSizer", "chunk_document", "chunk_file", "chunk_text", "iter_files"]

_NL = r"(?:\r\n|\r|\n)"
_PARA = re.compile(rf"{_NL}[ \t]*{_NL}|{_NL}(?=#{{1,6}} )")  # blank line (any newline style), or a markdown heading
_SENT = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])\s*")
_WORD = re.compile(r"[^\W_]")  # a letter or digit (``_`` alone, as in ``___``, is not a word)


class Sizer(Protocol):
    """Measures text in some unit and finds where the first ``n`` units of a span end."""

    unit: str

    def count(self, text: str) -> int: ...

    def cut(self, text: str, lo: int, hi: int, n: int) -> int: ...


@dataclass(frozen=True)
class CharSizer:
    """Sizes in characters."""

    unit: str = "chars"

    def count(self, text: str) -> int:
        return len(text)

    def cut(self, text: str, lo: int, hi: int, n: int) -> int:
        end = min(hi, lo + n)
        if end < hi:
            space = text.rfind(" ", lo, end + 1)
            end = space if space > lo else end
        return end


class TokenSizer:
    """Sizes in a Hugging Face (fast) tokenizer's tokens, special tokens not counted.

    For a sentence-transformers model ``m``: ``TokenSizer(m.tokenizer)``; its window is ``m.max_seq_length``
    tokens including the two special tokens.
    """

    unit = "tokens"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def count(self, text: str) -> int:
        if not text.strip():
            return 0
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def cut(self, text: str, lo: int, hi: int, n: int) -> int:
        enc = self.tokenizer(text[lo:hi], add_special_tokens=False, return_offsets_mapping=True)
        offs = enc["offset_mapping"]
        if len(offs) <= n:
            return hi
        end = lo + offs[n][0]  # where token n+1 starts: a token boundary
        if end <= lo:  # a first token longer than the span (cannot happen with n >= 1); keep progress
            end = lo + max(1, offs[n - 1][1])
        space = max(text.rfind(" ", lo, end + 1), text.rfind("\n", lo, end + 1))
        return space if space > lo + (end - lo) // 2 else end


def _spans(text: str, pattern: re.Pattern[str], lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """Pieces of ``text[lo:hi]`` between matches of ``pattern``, stripped of surrounding whitespace."""
    pos = lo
    for m in pattern.finditer(text, lo, hi):
        if m.end() == m.start() and m.start() == pos:
            continue
        yield from _strip(text, pos, m.start())
        pos = m.end()
    yield from _strip(text, pos, hi)


def _strip(text: str, lo: int, hi: int) -> Iterator[tuple[int, int]]:
    while lo < hi and text[lo].isspace():
        lo += 1
    while hi > lo and text[hi - 1].isspace():
        hi -= 1
    if hi > lo:
        yield lo, hi


def _pieces(text: str, lo: int, hi: int, size: int, sizer: Sizer) -> Iterator[tuple[int, int, int]]:
    """Sentences of ``text[lo:hi]`` as ``(start, end, size)``; a sentence longer than ``size`` is cut."""
    for plo, phi in _spans(text, _PARA, lo, hi):
        for slo, shi in _spans(text, _SENT, plo, phi):
            n = sizer.count(text[slo:shi])
            while n > size:
                cut = sizer.cut(text, slo, shi, size)
                for a, b in _strip(text, slo, cut):
                    yield a, b, sizer.count(text[a:b])
                slo = cut
                while slo < shi and text[slo].isspace():
                    slo += 1
                n = sizer.count(text[slo:shi])
            for a, b in _strip(text, slo, shi):
                yield a, b, n


def _has_word(text: str, lo: int, hi: int) -> bool:
    return _WORD.search(text, lo, hi) is not None


def chunk_text(
    text: str,
    source_id: str = "",
    max_chars: int | None = 800,
    metadata: dict | None = None,
    *,
    max_tokens: int | None = None,
    sizer: Sizer | None = None,
    overlap: int = 0,
    span: tuple[int, int] | None = None,
) -> list[Chunk]:
    """Chunks of ``text`` (offsets into ``text``) of at most ``max_chars`` characters, or, with ``max_tokens``
    and a ``sizer`` (``TokenSizer``), at most ``max_tokens`` tokens. ``overlap``: up to this many units of whole
    trailing sentences of a chunk start the next one. ``span``: chunk only ``text[lo:hi]`` (offsets stay into
    ``text``). Raises ``ConfigError`` naming the bad parameter.
    """
    if not isinstance(text, str):
        raise ConfigError(f"text must be a str, got {type(text).__name__}", param="text")
    if max_tokens is not None:
        if sizer is None:
            raise ConfigError("max_tokens needs a sizer (TokenSizer(embedder.tokenizer))", param="sizer")
        size = max_tokens
        if not isinstance(size, int) or size < 8:
            raise ConfigError(f"max_tokens must be an integer of at least 8, got {size!r}", param="max_tokens")
    else:
        sizer = CharSizer() if sizer is None else sizer
        size = max_chars
        if not isinstance(size, int) or size < 16:
            raise ConfigError(f"max_chars must be an integer of at least 16, got {size!r}", param="max_chars")
    if not isinstance(overlap, int) or not 0 <= overlap <= size // 2:
        raise ConfigError(
            f"overlap must be an integer in [0, {size // 2}] (half the size), got {overlap!r}", param="overlap"
        )
    lo, hi = span if span is not None else (0, len(text))
    chunks: list[Chunk] = []
    cur: list[tuple[int, int, int]] = []  # pieces of the chunk being built

    def total(ps: list[tuple[int, int, int]]) -> int:
        if not ps:
            return 0
        gaps = sum(sizer.count(text[a[1] : b[0]]) for a, b in zip(ps, ps[1:]))
        return sum(p[2] for p in ps) + gaps

    def emit() -> None:
        ps = list(cur)
        while ps and not _has_word(text, ps[-1][0], ps[-1][1]):
            ps.pop()
        while ps and not _has_word(text, ps[0][0], ps[0][1]):
            ps.pop(0)
        if ps:
            a, b = ps[0][0], ps[-1][1]
            chunks.append(Chunk(text=text[a:b], source_id=source_id, start=a, end=b, metadata=dict(metadata or {})))

    for piece in _pieces(text, lo, hi, size, sizer):
        if not cur and not _has_word(text, piece[0], piece[1]):
            continue  # a chunk does not start with a line of dashes
        if cur and total([*cur, piece]) <= size:
            cur.append(piece)
            continue
        if cur:
            emit()
            keep: list[tuple[int, int, int]] = []
            for p in reversed(cur):
                if overlap == 0 or total([p, *keep]) > overlap:
                    break
                keep.insert(0, p)
            while keep and total([*keep, piece]) > size:
                keep.pop(0)
            cur = keep
            if not cur and not _has_word(text, piece[0], piece[1]):
                continue
        cur.append(piece)
    if cur:
        emit()
    return chunks


def chunk_document(
    doc: Document,
    max_chars: int | None = 800,
    *,
    max_tokens: int | None = None,
    sizer: Sizer | None = None,
    overlap: int = 0,
) -> list[Chunk]:
    """Chunks of a document, each within one section (a PDF page, an HTML section), with offsets into ``doc.text``
    and metadata ``path``, ``type`` and the section's own (``page``, ``heading``, ``encoding``)."""
    base = {k: v for k, v in doc.metadata.items() if k in ("path", "type")}
    out: list[Chunk] = []
    for s in doc.sections:
        out += chunk_text(
            doc.text,
            doc.source_id,
            max_chars,
            {**base, **s.metadata},
            max_tokens=max_tokens,
            sizer=sizer,
            overlap=overlap,
            span=(s.start, s.end),
        )
    return out


def iter_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files of the supported types under the given files or folders, in sorted order (see ``documents.scan``,
    which also says which paths were passed over and why)."""
    files, _ = scan(paths)
    yield from files


def chunk_file(path: str | Path, max_chars: int | None = 800, **kwargs: Any) -> list[Chunk]:
    """Chunk one file of a supported type; the source id is the path as given (normalised).

    Raises ``DocumentError`` (unreadable, binary) or ``UnsupportedFileError``; ``kwargs`` as for ``chunk_document``.
    """
    return chunk_document(load_document(path), max_chars, **kwargs)
