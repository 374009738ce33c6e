"""Files to text: the document types ragcore reads, and the folder scan that reports every file it does not read.

| type | suffixes | text | chunk metadata |
|---|---|---|---|
| plain text, Markdown, reStructuredText | ``.txt .md .markdown .rst`` | the file as stored (no newline conversion), decoded as UTF-8 or, failing that, the encoding charset-normalizer detects (Windows-1252 on a tie) | ``encoding`` |
| HTML | ``.html .htm`` | the visible text (BeautifulSoup, stdlib parser; scripts, styles and ``<head>`` dropped), one paragraph per block element | ``heading`` (the section's nearest heading), ``title`` |
| PDF | ``.pdf`` | each page's text as pypdf extracts it, pages joined by a blank line | ``page`` (1-based) |

Offsets (``Chunk.start``/``end``) index ``load_document(path).text``; for text files that is exactly
``open(path, newline="", encoding=chunk.metadata["encoding"]).read()``. Anything else is refused by name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragcore.errors import DocumentError, UnsupportedFileError

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")
HTML_SUFFIXES = (".html", ".htm")
PDF_SUFFIXES = (".pdf",)
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + HTML_SUFFIXES + PDF_SUFFIXES


@dataclass
class Section:
    """A span of a document's text that chunks do not cross (a PDF page, an HTML section), with its metadata."""

    start: int
    end: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Document:
    """A file's text, the sections chunks stay within, and file-level metadata (``path``, ``type``, ``sha256``)."""

    source_id: str
    text: str
    sections: list[Section]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Skipped:
    """A path the scan or the loader did not index, and why."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


def source_id_for(path: str | Path) -> str:
    """The source id of a file: its path as given, normalised (``./docs//a.md`` -> ``docs/a.md``)."""
    return os.path.normpath(str(path))


def file_type(path: str | Path) -> str:
    """``text``, ``html`` or ``pdf``; raises ``UnsupportedFileError`` naming the supported suffixes otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return "text"
    if suffix in HTML_SUFFIXES:
        return "html"
    if suffix in PDF_SUFFIXES:
        return "pdf"
    what = f"file type {suffix!r}" if suffix else "a file without a suffix"
    raise UnsupportedFileError(str(path), f"{what} is not supported; supported: {' '.join(SUPPORTED_SUFFIXES)}")


def scan(paths: Iterable[str | Path]) -> tuple[list[Path], list[Skipped]]:
    """Files to index under the given files and folders (sorted per folder), and every path passed over, with why.

    Folders are walked without following symbolic links to folders (reported, not followed: name the target to
    index it); hidden entries (``.git``, ``.cache``) are passed over and reported; files of unsupported types found
    in folders are reported. A path given that does not exist raises ``FileNotFoundError``.
    """
    files: list[Path] = []
    skipped: list[Skipped] = []
    for p in map(Path, paths):
        if p.is_dir():
            _walk(p, files, skipped)
        elif p.is_file():
            files.append(p)
        elif p.is_symlink():
            skipped.append(Skipped(str(p), "broken symbolic link"))
        else:
            raise FileNotFoundError(f"no such file or folder: {str(p)!r}")
    return files, skipped


def _walk(folder: Path, files: list[Path], skipped: list[Skipped]) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        skipped.append(Skipped(str(folder), f"folder not readable: {e.strerror or e}"))
        return
    for e in entries:
        path = Path(e.path)
        try:
            is_dir, is_link = e.is_dir(), e.is_symlink()
        except OSError as err:
            skipped.append(Skipped(str(path), f"not readable: {err.strerror or err}"))
            continue
        if e.name.startswith("."):
            skipped.append(Skipped(str(path), f"hidden {'folder' if is_dir else 'file'}, passed over"))
        elif is_dir and is_link:
            skipped.append(Skipped(str(path), "symbolic link to a folder, not followed (name its target to index it)"))
        elif is_dir:
            _walk(path, files, skipped)
        elif is_link and not path.exists():
            skipped.append(Skipped(str(path), "broken symbolic link"))
        elif path.suffix.lower() not in SUPPORTED_SUFFIXES:
            skipped.append(Skipped(str(path), f"file type {path.suffix.lower() or '(none)'!r} is not supported"))
        else:
            files.append(path)


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes; ``DocumentError`` with the reason when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise DocumentError(str(path), f"not readable: {e.strerror or e}") from e


def fingerprint(data: bytes) -> str:
    """sha256 of a file's bytes: what tells a changed file from an unchanged one."""
    return hashlib.sha256(data).hexdigest()


def load_document(path: str | Path, data: bytes | None = None) -> Document:
    """Read one file into a ``Document`` (see the module table). ``data``: its bytes, if already read.

    Raises ``UnsupportedFileError`` for other types and ``DocumentError`` for an unreadable, binary or damaged file.
    """
    kind = file_type(path)
    data = read_bytes(path) if data is None else data
    sid = source_id_for(path)
    meta: dict[str, Any] = {"path": str(path), "type": kind, "sha256": fingerprint(data)}
    if kind == "pdf":
        text, sections = _pdf(path, data)
    elif kind == "html":
        text, sections = _html(decode(path, data)[0])
    else:
        text, enc = decode(path, data)
        meta["encoding"] = enc
        sections = [Section(0, len(text), {"encoding": enc})]
    return Document(sid, text, sections, meta)


def decode(path: str | Path, data: bytes) -> tuple[str, str]:
    """Text and encoding of a text file: UTF-8 (a BOM kept out of the text) or what charset-normalizer detects.

    No newline conversion: offsets into the text are offsets into the file as stored, read with that encoding.
    """
    if b"\0" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DocumentError(str(path), "binary content (NUL bytes), not text")
    for enc in ("utf-8-sig",) if data.startswith(b"\xef\xbb\xbf") else ("utf-8",):
        try:
            return data.decode(enc), enc
        except UnicodeDecodeError:
            pass
    from charset_normalizer import from_bytes

    results = from_bytes(data)
    best = results.best()
    if best is None:
        raise DocumentError(str(path), "binary content or an unknown text encoding")
    enc = best.encoding
    # On a tie (short texts often fit several single-byte code pages equally), prefer Windows-1252, the superset
    # of Latin-1's printable characters that Western text is most often in (as browsers do).
    for m in results:
        if m.chaos <= best.chaos and m.coherence >= best.coherence and "cp1252" in m.could_be_from_charset:
            enc = "cp1252"
            break
    logger.info("%s is not UTF-8; read as %s", path, enc)
    return data.decode(enc), enc


_BLOCK = frozenset(
    [
        "address",
        "article",
        "aside",
        "blockquote",
        "body",
        "dd",
        "details",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "summary",
        "table",
        "td",
        "th",
        "tr",
        "ul",
        "br",
    ]
)
_HIDDEN = frozenset(["script", "style", "head", "template", "noscript", "svg", "iframe", "object"])
_HEADING = re.compile(r"^h[1-6]$")


def _html(markup: str) -> tuple[str, list[Section]]:
    """Visible text of an HTML page, one paragraph per block element, split into sections at headings."""
    from bs4 import BeautifulSoup, NavigableString
    from bs4.element import Comment, Declaration, Doctype, ProcessingInstruction, Tag

    soup = BeautifulSoup(markup, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    parts: list[str] = []
    headings: list[tuple[int, str]] = []  # (offset in the text, heading text)
    pending_break = False

    def emit(s: str) -> None:
        nonlocal pending_break
        if pending_break and parts:
            parts.append("\n\n")
        elif parts and not parts[-1].endswith((" ", "\n")) and not s.startswith(" "):
            parts.append(" ")
        pending_break = False
        parts.append(s)

    def walk(node: Tag) -> None:
        nonlocal pending_break
        for child in node.children:
            if isinstance(child, (Comment, Declaration, Doctype, ProcessingInstruction)):
                continue
            if isinstance(child, NavigableString):
                s = " ".join(str(child).split())
                if s:
                    emit(s)
                continue
            if not isinstance(child, Tag) or child.name in _HIDDEN:
                continue
            block = child.name in _BLOCK
            if block:
                pending_break = True
            if _HEADING.match(child.name or ""):
                text = child.get_text(" ", strip=True)
                if text:
                    emit(" ".join(text.split()))
                    headings.append((sum(map(len, parts)) - len(parts[-1]), " ".join(text.split())))
                pending_break = True
                continue
            if child.name == "pre":
                raw = child.get_text()
                if raw.strip():
                    emit(raw.strip("\n"))
            else:
                walk(child)
            if block:
                pending_break = True

    walk(soup)
    text = "".join(parts)
    bounds = [0] + [off for off, _ in headings if off > 0] + [len(text)]
    names = ([""] if not headings or headings[0][0] > 0 else []) + [h for _, h in headings]
    sections = []
    for (lo, hi), name in zip(zip(bounds, bounds[1:]), names):
        meta = {"heading": name} if name else {}
        if title:
            meta["title"] = title
        sections.append(Section(lo, hi, meta))
    return text, sections


def _pdf(path: str | Path, data: bytes) -> tuple[str, list[Section]]:
    """Each page's extracted text (pypdf), pages joined by a blank line; one section per page."""
    import io

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise DocumentError(str(path), "encrypted PDF; decrypt it first")
        pages = [p.extract_text() or "" for p in reader.pages]
    except DocumentError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as e:
        raise DocumentError(str(path), f"damaged or unreadable PDF ({type(e).__name__}: {e})") from e
    text, sections, pos = "", [], 0
    for i, page in enumerate(pages, start=1):
        if i > 1:
            text += "\n\n"
            pos += 2
        text += page
        sections.append(Section(pos, pos + len(page), {"page": i}))
        pos += len(page)
    return text, sections
