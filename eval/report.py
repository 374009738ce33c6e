"""Writing results: a JSON file (the stable interface) and a Markdown table beside it."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as JSON atomically; also write ``<path>.md`` with a table of its flat rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
    os.replace(tmp, path)
    path.with_suffix(".md").write_text(markdown_table(data))
    logger.info("wrote %s", path)
    return path


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


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4f}" if abs(x) < 100 else f"{x:.1f}"
    return str(x)
