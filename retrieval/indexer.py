"""Keep an index in step with files: one file is one source, holding its current content only.

``sync(index, paths)`` reads the files under ``paths`` and, under the index's writer lock:

* adds new files, re-chunks and re-embeds changed ones (their sha256 differs), leaves unchanged ones alone;
* removes the sources of files that are gone from a folder it was given (a file named directly is only added
  or updated);
* reports every file it did not index, with the reason (unsupported type, unreadable, binary, no text,
  symlinked or unreadable folder) instead of stopping at the first;
* refuses an existing index whose settings (embedder, FAISS factory, chunking) differ from the ones asked for,
  naming the difference; settings not asked for are taken from the index;
* writes a new version only when something changed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragcore.chunking import TokenSizer, chunk_document
from ragcore.documents import DocumentError, Skipped, fingerprint, load_document, read_bytes, scan, source_id_for
from ragcore.errors import ConfigError, EmptyCorpusError, IndexMismatchError, IndexNotFoundError
from ragcore.models import DEFAULT_EMBEDDER
from retrieval import store
from retrieval.hybrid import HybridRetriever

logger = logging.getLogger(__name__)

DEFAULT_FACTORY = "Flat"
DEFAULT_CHUNK_TOKENS = 200  # MiniLM reads 254 (256 less [CLS] and [SEP])
DEFAULT_OVERLAP_TOKENS = 20


@dataclass
class SyncReport:
    """What a ``sync`` did. Lists hold source ids (normalised paths)."""

    index: str
    version: str | None
    written: bool
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    chunks_added: int = 0
    chunks_total: int = 0
    truncated: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("new", "changed", "unchanged", "removed", "skipped")}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skipped"] = [s.to_dict() for s in self.skipped]
        d["counts"] = self.counts()
        return d


def chunking_settings(
    chunk_tokens: int | None = None, overlap: int | None = None, max_chars: int | None = None
) -> dict[str, Any] | None:
    """The chunking asked for, as stored in the manifest; None when nothing was asked (take the index's)."""
    if chunk_tokens is not None and max_chars is not None:
        raise ConfigError("give chunk_tokens or max_chars, not both", param="max_chars")
    if max_chars is not None:
        return {"unit": "chars", "size": max_chars, "overlap": overlap or 0}
    if chunk_tokens is not None or overlap is not None:
        return {
            "unit": "tokens",
            "size": DEFAULT_CHUNK_TOKENS if chunk_tokens is None else chunk_tokens,
            "overlap": DEFAULT_OVERLAP_TOKENS if overlap is None else overlap,
        }
    return None


def _default_chunking() -> dict[str, Any]:
    return {"unit": "tokens", "size": DEFAULT_CHUNK_TOKENS, "overlap": DEFAULT_OVERLAP_TOKENS}


def _under(sid: str, folder: str) -> bool:
    if folder == ".":
        return not os.path.isabs(sid) and not sid.startswith("..")
    return sid.startswith(folder.rstrip(os.sep) + os.sep)


def check_settings(r: HybridRetriever, root: Path, asked: dict[str, Any]) -> None:
    """Refuse (``IndexMismatchError``, naming the parameter) an index built with other settings than asked."""
    have = r.settings()
    for key, want in asked.items():
        if want is None or (key == "chunking" and have["chunking"] is None):
            continue
        if have[key] != want:
            raise IndexMismatchError(
                f"index {str(root)!r} was built with {key}={have[key]!r}, but {key}={want!r} was asked for",
                param=key,
                hint="leave the option out to keep the index's setting, or index into a new folder",
            )


def sync(
    index: str | Path,
    paths: Iterable[str | Path],
    *,
    embedder: str | None = None,
    factory: str | None = None,
    chunk_tokens: int | None = None,
    overlap: int | None = None,
    max_chars: int | None = None,
    lock_timeout: float = store.DEFAULT_LOCK_TIMEOUT,
    progress: bool = False,
    device: str | None = None,
) -> SyncReport:
    """Bring the index at ``index`` in step with the files under ``paths`` (see the module docstring).

    Raises ``IndexPathError`` (``index`` is a file; checked first), ``FileNotFoundError`` (a path given does not
    exist), ``IndexMismatchError`` (other settings), ``IndexLockedError``, ``ConfigError`` (bad sizes or factory),
    ``EmptyCorpusError`` (nothing to index) and ``IndexWriteError`` (disk full; the index unchanged).
    """
    root = store.check_root(index)
    paths = [Path(p) for p in paths]
    files, skipped = scan(paths)
    asked_chunking = chunking_settings(chunk_tokens, overlap, max_chars)
    created = not root.exists()
    try:
        return _sync_locked(
            root, paths, files, skipped, embedder, factory, asked_chunking, lock_timeout, progress, device
        )
    finally:
        if created and not (root / "CURRENT").exists():  # a first run that wrote nothing leaves no folder behind
            (root / store.LOCK_NAME).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                root.rmdir()


def _sync_locked(
    root: Path,
    paths: list[Path],
    files: list[Path],
    skipped: list[Skipped],
    embedder: str | None,
    factory: str | None,
    asked_chunking: dict[str, Any] | None,
    lock_timeout: float,
    progress: bool,
    device: str | None,
) -> SyncReport:
    with store.locked(root, lock_timeout):
        try:
            r = HybridRetriever.load(root, progress=progress, device=device)
            check_settings(r, root, {"embedder": embedder, "factory": factory, "chunking": asked_chunking})
        except IndexNotFoundError:
            r = HybridRetriever(
                embedder=embedder or DEFAULT_EMBEDDER, factory=factory or DEFAULT_FACTORY, progress=progress,
                device=device,
            )  # fmt: skip
        before = store.current_version(root) if (root / "CURRENT").exists() else None
        chunking = asked_chunking or r.chunking or _default_chunking()
        r.chunking = chunking
        sizer_kwargs = _sizer(r, chunking)
        report = SyncReport(str(root), before, False, skipped=list(skipped), settings=r.settings())
        docs: dict[str, tuple[list, dict]] = {}
        seen: set[str] = {source_id_for(s.path) for s in skipped}
        for f in files:
            sid = source_id_for(f)
            seen.add(sid)
            try:
                data = read_bytes(f)
                fp = fingerprint(data)
                if sid in r.sources and r.sources[sid].get("sha256") == fp:
                    report.unchanged.append(sid)
                    continue
                doc = load_document(f, data)
                chunks = chunk_document(doc, **sizer_kwargs)
            except DocumentError as e:
                report.skipped.append(Skipped(str(f), e.reason))
                continue
            if not chunks:
                report.skipped.append(Skipped(str(f), "holds no text to index"))
                if sid in r.sources:
                    report.removed.append(sid)
                continue
            (report.changed if sid in r.sources else report.new).append(sid)
            info = {"sha256": fp, "type": doc.metadata["type"], "bytes": len(data)}
            docs[sid] = (chunks, info)
        for p in paths:
            if p.is_dir():
                folder = source_id_for(p)
                report.removed += [s for s in r.sources if _under(s, folder) and s not in seen]
        report.removed = sorted(set(report.removed))
        if docs or report.removed:
            report.chunks_added = r.replace_sources(docs)
            r.remove_sources(report.removed)
            report.truncated = [
                {"source_id": c.source_id, "start": c.start, "end": c.end, "tokens": n}
                for c, n in r.truncated([c for chunks, _ in docs.values() for c in chunks])
            ]
            if not r.chunks:
                what = "the files given hold no text to index" if not before else "no source would be left"
                raise EmptyCorpusError(f"{what}; the index at {str(root)!r} was not written")
            report.version = r.save(root)
            report.written = True
        elif before is None:
            why = "; ".join(f"{s.path!r}: {s.reason}" for s in report.skipped[:3])
            raise EmptyCorpusError(
                f"nothing to index under {[str(p) for p in paths]}" + (f": {why}" if why else ": no files found")
            )
        report.chunks_total = len(r)
    return report


def _sizer(r: HybridRetriever, chunking: dict[str, Any]) -> dict[str, Any]:
    size, overlap = chunking["size"], chunking["overlap"]
    if chunking["unit"] == "chars":
        return {"max_chars": size, "overlap": overlap}
    if not isinstance(size, int) or size < 8 or size > r.max_tokens:
        raise ConfigError(
            f"chunk_tokens must be an integer from 8 to {r.max_tokens} (what the embedder {r.embedder_name!r} "
            f"reads), got {size!r}",
            param="chunk_tokens",
        )
    return {"max_chars": None, "max_tokens": size, "overlap": overlap, "sizer": TokenSizer(r._model.tokenizer)}


def remove_sources(
    index: str | Path, source_ids: Iterable[str], lock_timeout: float = store.DEFAULT_LOCK_TIMEOUT
) -> str:
    """Remove sources from the index (under its lock) and write a new version; returns its name.

    ``SourceNotFoundError`` names an id not in the index; ``EmptyCorpusError`` when no source would be left.
    """
    root = store.check_root(index)
    with store.locked(root, lock_timeout):
        r = HybridRetriever.load(root)
        ids = [source_id_for(s) if source_id_for(s) in r.sources else s for s in source_ids]
        for sid in ids:
            r.remove(sid)
        if not r.chunks:
            raise EmptyCorpusError(
                f"removing {ids} would leave the index at {str(root)!r} empty; delete the folder instead"
            )
        return r.save(root)


SEARCH_OPTIONS = ("fusion", "dense_weight", "pool", "rrf_k", "min_score", "device")


def document(source_id: str, text: str | None = None, data: bytes | None = None, filename: str | None = None):
    """A ``Document`` from text, or from a file's bytes read as its ``filename``'s type (``.pdf``, ``.html``,
    ``.md``, ...); ``source_id`` names it in the index. Raises ``ConfigError`` (``param="documents"``) when the
    id is empty or neither or both of ``text`` and ``data`` are given, and ``DocumentError`` for unreadable bytes."""
    from dataclasses import replace

    from ragcore.documents import Document, Section

    if not isinstance(source_id, str) or not source_id.strip():
        raise ConfigError(f"a document needs a non-empty source_id, got {source_id!r}", param="documents")
    if (text is None) == (data is None):
        raise ConfigError(f"document {source_id!r}: give its text or its file's bytes, one of them", param="documents")
    if text is not None:
        return Document(
            source_id, text, [Section(0, len(text), {})], {"type": "text", "sha256": fingerprint(text.encode())}
        )
    doc = load_document(filename or source_id, data)
    return replace(doc, source_id=source_id)


def ingest(
    index: str | Path,
    documents: Iterable[Any] = (),
    remove: Iterable[str] = (),
    like: HybridRetriever | None = None,
    lock_timeout: float = store.DEFAULT_LOCK_TIMEOUT,
) -> tuple[SyncReport, HybridRetriever]:
    """Add or replace the sources of ``documents`` (``Document`` objects, see :func:`document`) and remove the
    sources ``remove``, in one new version written atomically under the index's writer lock (a process killed
    meanwhile leaves the previous version current). The index is created when missing (default settings).

    Returns the report and the retriever of the new version, with the search settings of ``like`` (so a running
    pipeline can swap it in). Raises ``SourceNotFoundError`` for an id in ``remove`` not in the index,
    ``EmptyCorpusError`` when nothing would be left, ``IndexLockedError``, ``DocumentError``."""
    root = store.check_root(index)
    documents, remove = list(documents), list(remove)
    options = {k: getattr(like, k) for k in SEARCH_OPTIONS} if like is not None else {}
    with store.locked(root, lock_timeout):
        try:
            r = HybridRetriever.load(root, **options)
        except IndexNotFoundError:
            r = HybridRetriever(factory=DEFAULT_FACTORY, **options)
        before = store.current_version(root) if (root / "CURRENT").exists() else None
        r.chunking = r.chunking or _default_chunking()
        report = SyncReport(str(root), before, False, settings=r.settings())
        for sid in remove:
            r.remove(sid)
            report.removed.append(sid)
        docs: dict[str, tuple[list, dict]] = {}
        for doc in documents:
            fp = doc.metadata.get("sha256") or fingerprint(doc.text.encode())
            if doc.source_id in r.sources and r.sources[doc.source_id].get("sha256") == fp:
                report.unchanged.append(doc.source_id)
                continue
            chunks = chunk_document(doc, **_sizer(r, r.chunking))
            if not chunks:
                report.skipped.append(Skipped(doc.source_id, "holds no text to index"))
                continue
            (report.changed if doc.source_id in r.sources else report.new).append(doc.source_id)
            docs[doc.source_id] = (chunks, {"sha256": fp, "type": doc.metadata.get("type", "text")})
        if docs or remove:
            report.chunks_added = r.replace_sources(docs)
            if not r.chunks:
                raise EmptyCorpusError(f"no source would be left; the index at {str(root)!r} was not written")
            report.version = r.save(root)
            report.written = True
        report.chunks_total = len(r)
    return report, r
