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
        manifest.json          written last: schema version, embedder, dimension, counts, sha256 of every file

A save writes a new version into a temporary folder, fsyncs it, writes the manifest last, renames the folder
into place and only then points CURRENT at it. A save interrupted at any point leaves CURRENT on the previous
version. Loading checks the schema version, the file sizes and sha256 sums, and the counts, and refuses a
damaged or mismatched version with an error that names the versions still loadable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragcore.errors import IndexCorruptError, IndexMismatchError, IndexNotFoundError

logger = logging.getLogger(__name__)

FORMAT = "ragcore-index"
SCHEMA_VERSION = 1
KEEP_VERSIONS = 2
_VERSION = re.compile(r"^v(\d{6})$")


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
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if _VERSION.match(p.name) and (p / "manifest.json").exists())


def current_version(root: Path) -> str:
    root = Path(root)
    cur = root / "CURRENT"
    if not cur.exists():
        if root.is_dir() and versions(root):
            raise IndexCorruptError(f"index {str(root)!r} has no CURRENT file; versions on disk: {versions(root)}")
        raise IndexNotFoundError(f"no index at {str(root)!r} (build one with `ragcore index PATH --index {root}`)")
    name = cur.read_text().strip()
    if not _VERSION.match(name):
        raise IndexCorruptError(f"{str(cur)!r} names {name!r}, which is not a version; versions: {versions(root)}")
    return name


def write_version(root: Path, write_files: Callable[[Path], None], meta: dict[str, Any]) -> str:
    """Write a new version with ``write_files(folder)`` plus a manifest, then switch CURRENT to it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    existing = [int(_VERSION.match(v).group(1)) for v in versions(root)]
    name = f"v{max(existing, default=0) + 1:06d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
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
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in versions(root)[:-KEEP_VERSIONS]:
        shutil.rmtree(root / old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):  # left by a save that was killed
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    return name


def _point_current(root: Path, name: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".CURRENT-")
    with os.fdopen(fd, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / "CURRENT")
    _fsync(root)


def open_version(root: Path, version: str | None = None, verify: bool = True) -> tuple[Path, dict[str, Any]]:
    """Folder and manifest of a version (default: CURRENT), checked against its manifest."""
    root = Path(root)
    name = version or current_version(root)
    folder = root / name
    others = [v for v in versions(root) if v != name]
    hint = f"; other versions: {others} (load one with --index-version)" if others else ""
    mpath = folder / "manifest.json"
    if not mpath.exists():
        raise IndexCorruptError(f"index version {str(folder)!r} has no manifest.json{hint}")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexCorruptError(f"manifest {str(mpath)!r} is not valid JSON ({e}){hint}") from e
    if manifest.get("format") != FORMAT:
        raise IndexCorruptError(f"{str(mpath)!r} is not a ragcore index manifest{hint}")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise IndexMismatchError(
            f"index {str(folder)!r} has schema version {manifest.get('schema_version')!r}; "
            f"this ragcore reads version {SCHEMA_VERSION}: rebuild it with `ragcore index`"
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
