"""eval.report: the one JSON writer and reader, and the Markdown tables."""

from __future__ import annotations

import gzip
import json

import pytest

from eval.report import markdown_table, read_json, table, write_json


def test_write_json_then_read_json(tmp_path):
    data = {"bm25": {"recall@1": 0.5, "n": 2}, "dense": {"recall@1": 0.25, "n": 2}, "note": "x"}
    path = write_json(tmp_path / "sub" / "r.json", data)
    assert path == tmp_path / "sub" / "r.json" and read_json(path) == data
    assert (tmp_path / "sub" / "r.md").read_text() == markdown_table(data)
    assert [p.name for p in (tmp_path / "sub").iterdir() if p.name.startswith(".")] == []  # no temporary left
    write_json(tmp_path / "plain.json", {"a": 1}, markdown=False)
    assert not (tmp_path / "plain.md").exists()


def test_write_json_writes_standard_json_without_nan(tmp_path):
    """A NaN or an infinity (e.g. processor time not measured) is written as null, not as a bare NaN that strict
    JSON readers refuse."""
    data = {"s": {"cpu_s": float("nan"), "wall_s": 1.5}, "runs": [{"x": float("inf")}, (1, float("-inf"))]}
    path = write_json(tmp_path / "r.json", data, markdown=False)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {
        "s": {"cpu_s": None, "wall_s": 1.5},
        "runs": [{"x": None}, [1, None]],
    }


def test_read_json_reads_gzip_by_name(tmp_path):
    p = tmp_path / "r.json.gz"
    p.write_bytes(gzip.compress(json.dumps({"format": "kv"}).encode()))
    assert read_json(p) == {"format": "kv"}
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json")


def test_a_failed_write_keeps_the_old_file(tmp_path):
    p = write_json(tmp_path / "r.json", {"a": 1}, markdown=False)
    with pytest.raises(TypeError):
        write_json(p, {"a": object()}, markdown=False)
    assert read_json(p) == {"a": 1} and sorted(x.name for x in tmp_path.iterdir()) == ["r.json"]


def test_tables():
    assert (
        markdown_table({"bm25": {"recall@1": 0.5, "n": 2}})
        == "| | recall@1 | n |\n|---|---|---|\n| bm25 | 0.5000 | 2 |\n"
    )
    pairs = {"plain": {"accuracy": [0.5, 0.1], "tokens_mean": 10.0, "runs": [1, 2, 3]}, "crag": {"accuracy": (0.25, 0)}}
    assert markdown_table(pairs) == (
        "| | accuracy | tokens_mean |\n|---|---|---|\n| plain | 0.5000 ± 0.1000 | 10.0000 |\n| crag | 0.2500 ± 0 |  |\n"
    )  # a (mean, 95% half-width) pair is one cell; other lists are no column
    rows = [{"name": "a", "x": 0.12345, "y": "±"}, {"name": "b", "x": 2}]
    assert table(rows, ["name", "x", "y"], "{:.2f}").splitlines() == [
        "| name | x | y |",
        "|---|---|---|",
        "| a | 0.12 | ± |",
        "| b | 2 |  |",
    ]
