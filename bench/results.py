"""Write a section of docs/RESULTS.md from result tables, with the command that made them and the date.

Sections are delimited by ``<!-- BEGIN name -->`` / ``<!-- END name -->``; other sections stay untouched.
Numbers are never typed by hand: every bench script calls ``write_section``.
"""

from __future__ import annotations

import gzip
import json
import re
import shlex
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "RESULTS.md"
HEADER = "# Results\n\nEvery table here is written by the script named in its section; do not edit numbers by hand.\n"


def read_json(path: str | Path) -> dict:
    """A JSON file, gzip-compressed when its name ends in .gz (raw results kept in the repository are)."""
    raw = Path(path).read_bytes()
    return json.loads(gzip.decompress(raw) if str(path).endswith(".gz") else raw)


def command_line() -> str:
    """This process's command line; a ``--note TEXT`` argument shows as ``--note ...`` (the note is in the body)."""
    args = list(sys.argv[1:])
    for i, a in enumerate(args[:-1]):
        if a == "--note":
            args[i + 1] = "..."
    return " ".join(a if a == "..." else shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *args])


def write_section(name: str, title: str, body: str, command: str | None = None, path: Path = RESULTS) -> None:
    text = path.read_text() if path.exists() else HEADER
    block = (
        f"<!-- BEGIN {name} -->\n## {title}\n\n"
        f"Command: `{command or command_line()}`  \nDate: {time.strftime('%Y-%m-%d')}\n\n{body.strip()}\n"
        f"<!-- END {name} -->"
    )
    pat = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def table(rows: list[dict], cols: list[str], fmt: str = "{:.4f}") -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [fmt.format(r[c]) if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)
