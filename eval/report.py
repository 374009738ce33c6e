"""Results on disk: the one JSON writer and reader, and Markdown tables of result rows.

Every suite, benchmark driver and peer writes its JSON through :func:`write_json` and reads it back through
:func:`read_json` (raw results kept in the repository are gzip-compressed). This module imports nothing but the
standard library, so the kvpress peer can use it in its own environment.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def write_json(path: str | Path, data: dict[str, Any], markdown: bool = True, indent: int = 2) -> Path:
    """Write ``data`` as JSON atomically (a temporary file beside it, then a rename).

    Parameters
    ----------
    path : str or Path
        Destination; its folder is created.
    data : dict
        JSON-serialisable results.
    markdown : bool
        Also write ``<path>.md`` with :func:`markdown_table` of ``data``'s dict-valued entries.
    indent : int
        JSON indentation.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=indent, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if markdown:
        path.with_suffix(".md").write_text(markdown_table(data))
    logger.info("wrote %s", path)
    return path


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


def markdown_table(data: dict[str, Any]) -> str:
    """Rows are the dict-valued entries of ``data`` (e.g. one per retriever); columns their numeric keys."""
    rows = {k: v for k, v in data.items() if isinstance(v, dict)}
    if not rows:
        rows = {"result": data}
    cols: list[str] = []
    for v in rows.values():
        cols += [c for c, x in v.items() if isinstance(x, (int, float)) and c not in cols]
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
    if isinstance(x, float):
        return f"{x:.4f}" if abs(x) < 100 else f"{x:.1f}"
    return str(x)
