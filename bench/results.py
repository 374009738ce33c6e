"""Write a section of docs/RESULTS.md from result tables, with the command that made them and the date.

Sections are delimited by ``<!-- BEGIN name -->`` / ``<!-- END name -->``; other sections stay untouched.
Numbers are never typed by hand: every driver that measures calls ``write_section``. Result JSON is written and
read by ``eval.report`` (``write_json``, ``read_json``), tables made by ``eval.report.table``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import median
from typing import Any

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "RESULTS.md"
HEADER = "# Results\n\nEvery table here is written by the script named in its section; do not edit numbers by hand.\n"


def command_line() -> str:
    """This process's command line (``python -m bench.NAME ...`` for a driver run as a module); a ``--note TEXT``
    argument shows as ``--note ...`` (the note is in the body)."""
    args = list(sys.argv[1:])
    for i, a in enumerate(args[:-1]):
        if a == "--note":
            args[i + 1] = "..."
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    prog = f"python -m {spec.name}" if spec is not None and spec.name else Path(sys.argv[0]).as_posix()
    return " ".join([prog, *(a if a == "..." else shlex.quote(a) for a in args)])


def write_section(name: str, title: str, body: str, command: str | None = None, path: Path = RESULTS) -> None:
    """Replace (or append) the section ``name`` of ``path`` with ``title``, the command, today's date and ``body``.

    Drivers that finish together (one GPU session's scripts) may write at once: the read-modify-write holds a file
    lock beside ``path`` and the new text replaces the file atomically."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        _write_section(name, title, body, command, path)


def _write_section(name: str, title: str, body: str, command: str | None, path: Path) -> None:
    text = path.read_text() if path.exists() else HEADER
    block = (
        f"<!-- BEGIN {name} -->\n## {title}\n\n"
        f"Command: `{command or command_line()}`  \nDate: {time.strftime('%Y-%m-%d')}\n\n{body.strip()}\n"
        f"<!-- END {name} -->"
    )
    pat = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def median_ratio(a: Sequence[float], b: Sequence[float], unit: str = "") -> str:
    """``a`` over ``b``, runs paired: the ratio of their medians, then the range of the per-run ratios, as
    ``"2.41x (2.30-2.56)"`` (``unit`` after the ratio)."""
    r = sorted(x / y for x, y in zip(a, b, strict=True))
    return f"{median(a) / median(b):.2f}{unit} ({r[0]:.2f}-{r[-1]:.2f})"


def output_args(ap: Any) -> None:
    """The output options of a driver that measures into JSON and renders tables from such files."""
    ap.add_argument("--json", default=None, help="write the numbers to this JSON file")
    ap.add_argument("--render", nargs="+", default=None, help="print (or write) the table of these JSON files")
    ap.add_argument("--write-results", default=None, metavar="SECTION", help="with --render: docs/RESULTS.md")
    ap.add_argument("--note", default="", help="with --write-results: a paragraph above the table")


def render_files(ap: Any, a: Any, render: Callable[[list[dict[str, Any]]], str], title: str) -> int:
    """``--render``: the table of the JSON files ``a.render`` (each result with its file's name as ``run``),
    printed, or written as section ``a.write_results`` under ``title`` with ``a.note`` above it. A file that
    cannot be read, or is not a run of this driver, is refused through ``ap.error``."""
    results = []
    for f in a.render:
        try:
            results.append({"run": Path(f).stem, **json.loads(Path(f).read_text())})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as e:
            ap.error(f"--render: {f!r} cannot be read as a run's JSON ({e})")
    try:
        table = render(results)
    except (KeyError, TypeError, ValueError) as e:
        ap.error(f"--render: the files are not all runs of this driver (no {e} in one)")
    if a.write_results:
        write_section(a.write_results, title, (a.note + "\n\n" if a.note else "") + table)
    else:
        print(table)
    return 0


def check_outputs(ap: Any, a: Any) -> None:
    """Before a measuring run: ``--write-results`` and ``--note`` belong to ``--render``, and ``--json`` must be
    writable now, not once the run has ended. Errors go through ``ap.error``."""
    if a.write_results or a.note:
        ap.error("--write-results and --note go with --render (a run writes --json; its table is then rendered)")
    if a.json:
        out = Path(a.json)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            ap.error(f"--json: cannot make the folder of {a.json!r} ({e})")
        if out.is_dir() or not os.access(out.parent, os.W_OK):
            ap.error(f"--json: {a.json!r} cannot be written")


def finish(a: Any, res: dict[str, Any], render: Callable[[list[dict[str, Any]]], str]) -> int:
    """After a measuring run: ``res`` to ``a.json`` (when given), its profiler tables and its table printed."""
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))
    for name, table in res.get("profile", {}).items():
        print(f"\nprofile, {name}:\n{table}")
    print(render([res]))
    return 0
