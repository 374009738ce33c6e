"""Writing results: a JSON file (the stable interface) and a Markdown table beside it."""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from ragcore.errors import ConfigError

logger = logging.getLogger(__name__)


def table_path(path: str | Path) -> Path:
    """Where the Markdown table of the JSON at ``path`` goes: beside it, suffix ``.md``."""
    return Path(path).with_suffix(".md")


def check_out(path: str | Path, param: str = "out") -> Path:
    """Refuse, before any work, an output path that cannot take the JSON: a folder, a ``.md`` name (the table
    beside the JSON would overwrite it), or a place whose parent is a file or not writable. ``ConfigError``."""
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


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as JSON atomically; also write ``<path minus suffix>.md`` with a table of its flat rows.

    Files are created with the process's umask. Raises ``ConfigError`` for a path ``check_out`` refuses.
    """
    path = check_out(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, json.dumps(data, indent=2, sort_keys=False))
    _atomic_write(table_path(path), markdown_table(data))
    logger.info("wrote %s", path)
    return path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}-{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
