"""The on-disk index format (no pickle anywhere).

An index is a folder::

    INDEX/
      CURRENT                  one line: the name of the active version, replaced atomically
      v000001/                 an older complete version (kept as a fallback)
      v000002/
        chunks.jsonl           one Chunk as JSON per line, in document order
        embeddings.npy         float32 (n, dim), unit length, row i = chunk i (numpy format, no pickle)
        dense.faiss            the FAISS index over the embeddings (FAISS's own binary format)
        bm25/                  the bm25s index (numpy arrays + JSON)
        sources.json           (schema 2) one entry per source: {source id: {sha256, chunks, type, bytes}}
        manifest.json          written last: schema version, settings (embedder, factory, chunking, bm25),
                               dimension, counts, sha256 of every file
      .lock                    the writers' lock (filelock); readers never take it

A save writes a new version into a temporary folder, fsyncs it, writes the manifest last, renames the folder
into place and only then points CURRENT at it. A save interrupted at any point (Ctrl-C, kill, disk full) leaves
CURRENT on the previous version. Writers take ``INDEX/.lock`` around their whole read-modify-write (``locked``),
so two writers never lose each other's work: the second waits, up to a timeout. Folders and files are created
with the process's umask. Loading checks the schema version, the file sizes and sha256 sums, and the counts,
and refuses a damaged or mismatched version with an error that names the versions still loadable.

Schema history: 1 (no sources.json, no chunking settings) is still read: its sources are taken from the chunks,
with unknown fingerprints, so the next ``ragcore index`` of a path re-reads its files once and writes schema 2.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ragcore.errors import (
    ConfigError,
    IndexCorruptError,
    IndexLockedError,
    IndexMismatchError,
    IndexNotFoundError,
    IndexPathError,
    IndexWriteError,
)

logger = logging.getLogger(__name__)

FORMAT = "ragcore-index"
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
KEEP_VERSIONS = 2
LOCK_NAME = ".lock"
DEFAULT_LOCK_TIMEOUT = 600.0  # seconds a writer waits for another one
_VERSION = re.compile(r"^v(\d{6})$")
_held: dict[tuple[Path, int], int] = {}


def check_root(root: str | Path) -> Path:
    """The index folder path, refused (``IndexPathError``) when it exists and is not a folder."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise IndexPathError(
            f"index path {str(root)!r} is a file, not an index folder",
            hint="name a folder (new or holding an index), e.g. the default .ragcore/index",
        )
    return root


def check_version_name(version: str) -> str:
    """A version name as stored (``v000001``); anything else (``../../etc``) raises ``ConfigError``."""
    if not isinstance(version, str) or not _VERSION.match(version):
        raise ConfigError(f"index version must look like 'v000001', got {version!r}", param="version")
    return version


@contextmanager
def locked(root: str | Path, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the index's writer lock (``root/.lock``, created with the folder if needed) for a read-modify-write.

    Re-entrant within one thread. Raises ``IndexLockedError`` when another writer holds it for ``timeout`` seconds.
    """
    from filelock import FileLock, Timeout

    root = check_root(root)
    root.mkdir(parents=True, exist_ok=True)
    key = (root.resolve(), threading.get_ident())
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    lock = FileLock(str(root / LOCK_NAME), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise IndexLockedError(
            f"index {str(root)!r} is being written by another process; waited {timeout:g} s for its lock "
            f"({str(root / LOCK_NAME)!r})",
            hint="let the other run finish, or wait longer (lock_timeout)",
        ) from None
    _held[key] = 1
    try:
        yield
    finally:
        _held.pop(key, None)
        lock.release()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def versions(root: Path) -> list[str]:
    """Complete versions (those with a manifest), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if _VERSION.match(p.name) and (p / "manifest.json").exists())


def current_version(root: Path) -> str:
    root = check_root(root)
    cur = root / "CURRENT"
    if not cur.exists():
        if root.is_dir() and versions(root):
            raise IndexCorruptError(f"index {str(root)!r} has no CURRENT file; versions on disk: {versions(root)}")
        raise IndexNotFoundError(f"no index at {str(root)!r} (build one with `ragcore index PATH --index {root}`)")
    name = cur.read_text().strip()
    if not _VERSION.match(name):
        raise IndexCorruptError(f"{str(cur)!r} names {name!r}, which is not a version; versions: {versions(root)}")
    return name


def write_version(
    root: Path, write_files: Callable[[Path], None], meta: dict[str, Any], lock_timeout: float = DEFAULT_LOCK_TIMEOUT
) -> str:
    """Write a new version with ``write_files(folder)`` plus a manifest, then switch CURRENT to it (under the lock).

    Raises ``IndexWriteError`` (disk full, no permission) with CURRENT left on the previous version.
    """
    root = check_root(root)
    with locked(root, lock_timeout):
        existing = [int(_VERSION.match(v).group(1)) for v in versions(root)]
        name = f"v{max(existing, default=0) + 1:06d}"
        tmp = root / f".tmp-{secrets.token_hex(6)}"
        try:
            tmp.mkdir()  # mode 0o777 less the umask (tempfile.mkdtemp would force 0700)
            write_files(tmp)
            files = {}
            for p in sorted(q for q in tmp.rglob("*") if q.is_file()):
                _fsync(p)
                files[p.relative_to(tmp).as_posix()] = {"bytes": p.stat().st_size, "sha256": _sha256(p)}
            manifest = {
                "format": FORMAT,
                "schema_version": SCHEMA_VERSION,
                "version": name,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **meta,
                "files": files,
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
            _fsync(tmp / "manifest.json")
            os.replace(tmp, root / name)
            _fsync(root)
            _point_current(root, name)
        except OSError as e:
            was = (root / "CURRENT").read_text().strip() if (root / "CURRENT").is_file() else None
            what = "no space left on the device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            raise IndexWriteError(
                f"could not write a new version of index {str(root)!r}: {what}; the index is unchanged "
                f"({'CURRENT still names ' + was if was else 'no version was written'})",
                hint="free some space (or fix the permissions) and run again" if e.errno == errno.ENOSPC else None,
            ) from e
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        for old in versions(root)[:-KEEP_VERSIONS]:
            shutil.rmtree(root / old, ignore_errors=True)
        for stale in root.glob(".tmp-*"):  # left by a save that was killed
            try:
                if time.time() - stale.stat().st_mtime > 3600:
                    shutil.rmtree(stale, ignore_errors=True)
            except OSError:
                pass
    return name


def _point_current(root: Path, name: str) -> None:
    tmp = root / f".CURRENT-{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies (mkstemp forces 0600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / "CURRENT")
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync(root)


def open_version(root: Path, version: str | None = None, verify: bool = True) -> tuple[Path, dict[str, Any]]:
    """Folder and manifest of a version (default: CURRENT), checked against its manifest."""
    root = check_root(root)
    name = check_version_name(version) if version is not None else current_version(root)
    folder = root / name
    others = [v for v in versions(root) if v != name]
    hint = f"; other complete versions on disk: {others}" if others else ""
    if version is not None and not folder.is_dir():
        raise IndexNotFoundError(f"index {str(root)!r} has no version {name!r}; versions: {versions(root)}")
    mpath = folder / "manifest.json"
    if not mpath.exists():
        raise IndexCorruptError(f"index version {str(folder)!r} has no manifest.json{hint}")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexCorruptError(f"manifest {str(mpath)!r} is not valid JSON ({e}){hint}") from e
    if manifest.get("format") != FORMAT:
        raise IndexCorruptError(f"{str(mpath)!r} is not a ragcore index manifest{hint}")
    if manifest.get("schema_version") not in READABLE_SCHEMAS:
        raise IndexMismatchError(
            f"index {str(folder)!r} has schema version {manifest.get('schema_version')!r}; "
            f"this ragcore reads versions {list(READABLE_SCHEMAS)}",
            hint="rebuild it with `ragcore index` into a new folder",
        )
    for rel, info in manifest.get("files", {}).items():
        p = folder / rel
        if not p.is_file():
            raise IndexCorruptError(f"index file {str(p)!r} is missing{hint}")
        if p.stat().st_size != info["bytes"]:
            raise IndexCorruptError(
                f"index file {str(p)!r} has {p.stat().st_size} bytes, manifest says {info['bytes']} "
                f"(truncated or overwritten){hint}"
            )
        if verify and _sha256(p) != info["sha256"]:
            raise IndexCorruptError(f"index file {str(p)!r} fails its sha256 check (tampered or damaged){hint}")
    return folder, manifest


def check_meta(manifest: dict[str, Any], key: str, expected: Any, folder: Path) -> None:
    if manifest.get(key) != expected:
        raise IndexMismatchError(
            f"index {str(folder)!r} was built with {key}={manifest.get(key)!r}, but {expected!r} was asked for"
        )
