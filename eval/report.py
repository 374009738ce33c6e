"""Results on disk: the one JSON writer and reader, and Markdown tables of result rows.

Every suite, benchmark driver and peer writes its JSON through :func:`write_json` and reads it back through
:func:`read_json` (raw results kept in the repository are gzip-compressed). This module imports nothing but the
standard library, so the kvpress peer can use it in its own environment.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def table_path(path: str | Path) -> Path:
    """Where the Markdown table of the JSON at ``path`` goes: beside it, suffix ``.md``."""
    return Path(path).with_suffix(".md")


def check_out(path: str | Path, param: str = "out") -> Path:
    """Refuse, before any work, an output path that cannot take the JSON: a folder, a ``.md`` name (the table
    beside the JSON would overwrite it), or a place whose parent is a file or not writable.

    Raises
    ------
    ragcore.errors.ConfigError
        Naming ``param`` (the CLI shows its flag).
    """
    from ragcore.errors import ConfigError  # here, so the kvpress peer's environment can import this module

    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"output {str(path)!r} is a folder; name a file such as {str(path / 'results.json')!r}", param=param
        )
    if path.suffix.lower() == ".md":
        raise ConfigError(
            f"output {str(path)!r} ends in .md, the name of the Markdown table written beside the JSON; "
            f"name the JSON file, e.g. {str(path.with_suffix('.json'))!r}",
            param=param,
        )
    parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise ConfigError(f"output {str(path)!r}: {str(parent)!r} is a file, not a folder", param=param)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"output {str(path)!r}: folder {str(parent)!r} is not writable", param=param)
    return path


def write_json(path: str | Path, data: dict[str, Any], markdown: bool = True, indent: int = 2) -> Path:
    """Write ``data`` as JSON atomically (a temporary file beside it, then a rename), with the process's umask.

    Parameters
    ----------
    path : str or Path
        Destination; its folder is created. A ``.md`` name or a folder is refused (:func:`check_out`).
    data : dict
        JSON-serialisable results. A float that is not finite (NaN, an infinity: e.g. a mean of nothing) is
        written as ``null``, so that every file is standard JSON (:func:`finite`).
    markdown : bool
        Also write :func:`table_path` with :func:`markdown_table` of ``data``'s dict-valued entries.
    indent : int
        JSON indentation.

    Returns
    -------
    Path
        ``path``.
    """
    path = check_out(path) if markdown else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, json.dumps(finite(data), indent=indent, sort_keys=False, allow_nan=False) + "\n")
    if markdown:
        _atomic_write(table_path(path), markdown_table(data))
    logger.info("wrote %s", path)
    return path


def finite(data: Any) -> Any:
    """``data`` with every float that is not finite (NaN, +-inf) replaced by None, in nested dicts, lists and
    tuples (standard JSON has no NaN: ``json.dumps`` would write a bare ``NaN``)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    return data


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}-{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: str | Path) -> Any:
    """A JSON file, gzip-compressed when its name ends in ``.gz``.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    json.JSONDecodeError
        The file is not JSON.
    """
    raw = Path(path).read_bytes()
    return json.loads(gzip.decompress(raw) if str(path).endswith(".gz") else raw)


def _cell_value(x: Any) -> bool:
    """A number, or a (mean, 95% half-width) pair of numbers: what a table cell shows."""
    number = (int, float)
    return isinstance(x, number) or (
        isinstance(x, (list, tuple)) and len(x) == 2 and all(isinstance(v, number) for v in x)
    )


def markdown_table(data: dict[str, Any]) -> str:
    """Rows are the dict-valued entries of ``data`` (e.g. one per retriever); columns their keys holding a number or
    a (mean, 95% half-width) pair, shown as ``mean ± half-width``."""
    rows = {k: v for k, v in data.items() if isinstance(v, dict)}
    if not rows:
        rows = {"result": data}
    cols: list[str] = []
    for v in rows.values():
        cols += [c for c, x in v.items() if _cell_value(x) and c not in cols]
    lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, v in rows.items():
        cells = [_fmt(v.get(c, "")) for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table(rows: Sequence[dict[str, Any]], cols: Sequence[str], fmt: str = "{:.4f}") -> str:
    """A Markdown table of ``rows`` (one dict each) in the columns ``cols``; floats through ``fmt``."""
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [fmt.format(r[c]) if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _fmt(x: Any) -> str:
    if isinstance(x, (list, tuple)) and _cell_value(x):
        return f"{_fmt(x[0])} ± {_fmt(x[1])}"
    if isinstance(x, float):
        return f"{x:.4f}" if abs(x) < 100 else f"{x:.1f}"
    return str(x)


def same_setting(results: Sequence[dict[str, Any]], keys: Sequence[str], what: str = "merge takes runs") -> None:
    """Refuse results that differ in any of ``keys`` (shards of one run, or settings compared side by side).

    Raises
    ------
    ragcore.errors.ConfigError
        ``"{what} of one {key}, got [...]"``, naming the values found.
    """
    from ragcore.errors import ConfigError

    for key in keys:
        values = sorted({str(r.get(key)) for r in results})
        if len(values) > 1:
            raise ConfigError(f"{what} of one {key}, got {values}", param="results")


def dist_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed (peers record theirs)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
