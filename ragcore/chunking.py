"""Split strings and text/markdown files into passages that keep character offsets into the source.

Every chunk's text is exactly ``source[chunk.start:chunk.end]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from ragcore.errors import ConfigError
from ragcore.types import Chunk

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")

_PARA = re.compile(r"\n[ \t]*\n|\n(?=#{1,6} )")  # blank line, or a markdown heading starts
_SENT = re.compile(r"(?<=[.!?])\s+")


def _spans(text: str, pattern: re.Pattern[str], lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """Pieces of ``text[lo:hi]`` between matches of ``pattern``, stripped of surrounding whitespace."""
    pos = lo
    for m in pattern.finditer(text, lo, hi):
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


def _pieces(text: str, max_chars: int) -> Iterator[tuple[int, int]]:
    """Paragraphs; a paragraph longer than ``max_chars`` is cut at sentences, a sentence at ``max_chars``."""
    for lo, hi in _spans(text, _PARA, 0, len(text)):
        if hi - lo <= max_chars:
            yield lo, hi
            continue
        for slo, shi in _spans(text, _SENT, lo, hi):
            while shi - slo > max_chars:
                cut = text.rfind(" ", slo, slo + max_chars)
                cut = cut if cut > slo else slo + max_chars
                yield from _strip(text, slo, cut)
                slo = cut
            yield from _strip(text, slo, shi)


def chunk_text(text: str, source_id: str = "", max_chars: int = 800, metadata: dict | None = None) -> list[Chunk]:
    """Greedily merge paragraphs (and sentences of long ones) into chunks of at most ``max_chars``."""
    if not isinstance(text, str):
        raise ConfigError(f"text must be a str, got {type(text).__name__}")
    if max_chars < 16:
        raise ConfigError(f"max_chars must be at least 16, got {max_chars!r}")
    chunks: list[Chunk] = []
    cur: tuple[int, int] | None = None
    for lo, hi in _pieces(text, max_chars):
        if cur is not None and hi - cur[0] <= max_chars:
            cur = (cur[0], hi)
            continue
        if cur is not None:
            chunks.append(_make(text, cur, source_id, metadata))
        cur = (lo, hi)
    if cur is not None:
        chunks.append(_make(text, cur, source_id, metadata))
    return chunks


def _make(text: str, span: tuple[int, int], source_id: str, metadata: dict | None) -> Chunk:
    lo, hi = span
    return Chunk(text=text[lo:hi], source_id=source_id, start=lo, end=hi, metadata=dict(metadata or {}))


def iter_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Text and markdown files under the given files or folders, in sorted order."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
        elif p.is_file():
            yield p
        else:
            raise FileNotFoundError(f"no such file or folder: {str(p)!r}")


def chunk_file(path: str | Path, max_chars: int = 800) -> list[Chunk]:
    """Chunk one UTF-8 text or markdown file; the source id is the path as given."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{str(path)!r} is not UTF-8 text: {e}") from e
    return chunk_text(text, source_id=str(path), max_chars=max_chars, metadata={"path": str(path)})
