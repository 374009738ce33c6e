"""The foundation imports nothing above it; no module imports another module's private names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ABOVE = {"retrieval", "rerank", "compress", "eval", "serve", "bench"}
LIBRARY = ["ragcore", "retrieval", "rerank", "compress", "eval", "serve"]


def test_pipeline_and_types_import_nothing_above_the_foundation():
    code = (
        "import sys, ragcore.pipeline, ragcore.types, ragcore.stages, ragcore.registry; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {ABOVE!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_ragcore_modules_import_nothing_above_at_module_level():
    for path in (ROOT / "ragcore").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: lazy imports inside functions are the way up
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ABOVE, f"{path.relative_to(ROOT)} imports {name}"


def test_no_private_name_is_imported_from_another_module():
    for pkg in [*LIBRARY, "bench", "tests"]:
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                    assert not private, f"{path.relative_to(ROOT)} imports {private} from {node.module}"
