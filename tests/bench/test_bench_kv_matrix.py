"""bench.kv_matrix: merging matrix files, the plot and the RESULTS.md section, on hand-made runs."""

from __future__ import annotations

import gzip
import json

import pytest

from bench import kv_matrix


def _run(name: str, ratio: float, right: list[int], kv: float) -> dict:
    preds = [{"id": f"q{i}", "accuracy": float(r)} for i, r in enumerate(right)]
    acc = sum(right) / len(right)
    return {"compressor": name, "ratio": ratio, "accuracy": acc, "accuracy_ci95": 0.1, "predictions": preds,
            "kv_bytes": kv, "kv_bytes_full": 100.0, "prefill_s": 0.5, "decode_tok_s": 20.0}  # fmt: skip


def _file(tmp_path, name: str, fmt: str, runs: list[dict]) -> str:
    d = {"data": "eval/data/kv_retrieval_75_keys.jsonl.gz", "format": fmt, "model": "/m/qwen2.5-0.5b.gguf", "n": 4,
         "query_aware": False, "k": 5, "batch_size": 32, "complete": True, "runs": runs}  # fmt: skip
    p = tmp_path / f"{name}.json.gz"
    p.write_bytes(gzip.compress(json.dumps(d).encode()))
    return str(p)


def test_merge_plot_and_section(tmp_path, monkeypatch):
    """Files of the old ("kv") and new ("kv_retrieval") format name merge; the section shows the paired change
    against the full cache and the format as sections always showed it."""
    a = _file(tmp_path, "a", "kv", [_run("none", 0.0, [1, 1, 1, 0], 100.0), _run("snapkv", 0.5, [1, 0, 1, 0], 50.0)])
    b = _file(tmp_path, "b", "kv_retrieval", [_run("knorm", 0.5, [0, 0, 1, 1], 51.3)])
    sections = {}
    monkeypatch.setattr(kv_matrix, "write_section", lambda name, title, body: sections.update({name: (title, body)}))
    out, png = tmp_path / "m.json", tmp_path / "m.png"
    argv = ["--merge", a, b, "--out", str(out), "--plot", str(png), "--write-results", "s", "--note", "Ran here."]
    assert kv_matrix.main(argv) == 0
    merged = json.loads(out.read_text())
    assert [r["compressor"] for r in merged["runs"]] == ["none", "snapkv", "knorm"]
    assert merged["format"] == "kv_retrieval"
    assert png.read_bytes()[:4] == b"\x89PNG"
    title, body = sections["s"]
    assert title == "KV-cache compression: s (issue #3)"
    assert body.startswith(
        "Ran here.\n\nqwen2.5-0.5b.gguf on kv_retrieval_75_keys.jsonl.gz (kv), n = 4 per row, question-"
    )
    lines = body.splitlines()
    assert "| snapkv | 0.500 | 0.500 ± 0.100 | -0.250 ± 0.490 | 0.500 | False | 0.500 | 20.000 |" in lines
    assert "| knorm | 0.500 | 0.500 ± 0.100 | -0.250 ± 0.938 | 0.513 | False | 0.500 | 20.000 |" in lines


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert kv_matrix.main(["--ratios", "0.5,x", "--out", str(tmp_path / "m.json")]) == 2
    assert "bad --ratios" in capsys.readouterr().err
    only = _file(tmp_path, "only", "nq", [_run("snapkv", 0.5, [1, 0, 1, 0], 50.0)])
    assert kv_matrix.main(["--merge", only, "--out", str(tmp_path / "m.json")]) == 2
    assert "no full-cache" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["quokka", "chunk(chunk_size=5,share_heads=False):quokka"])
def test_an_unknown_compressor_fails_before_loading(tmp_path, capsys, spec):
    assert (
        kv_matrix.main(["--compressors", f"snapkv,{spec}", "--ratios", "0.5", "--out", str(tmp_path / "m.json")]) == 2
    )
    assert "quokka" in capsys.readouterr().err
