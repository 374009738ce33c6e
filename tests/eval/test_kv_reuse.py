"""eval kv --reuse: Q questions of one compressed context against Q full prefills, per question index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.kv_reuse import run_reuse
from ragcore.cli import main
from ragcore.errors import ConfigError

DATA = Path(__file__).resolve().parents[1] / "data"
KV, NQ = DATA / "kv_small.jsonl.gz", DATA / "nq_small.jsonl.gz"


def test_reuse_on_key_value_records(smol):
    res = run_reuse(smol, KV, "kvzip(scope='layer')", 0.5, reuse=3, limit=1, max_tokens=360, max_new_tokens=6,
                    progress=False)  # fmt: skip
    assert res["format"] == "kv_retrieval" and res["n"] == 3 and res["contexts"] == 1
    assert [x["index"] for x in res["by_index"]] == [0, 1, 2]
    assert len({p["question"] for p in res["predictions"]}) == 3  # three different keys of the same records
    assert 0 < res["kv_bytes"] < 0.6 * res["kv_bytes_full"]
    assert res["seconds_full"] > 0 and res["seconds_reuse"] > 0 and res["speedup"] > 0
    assert res["diff"] == pytest.approx(res["accuracy_reuse"] - res["accuracy_full"])


def test_reuse_on_nq_contexts_and_bad_sizes(smol, tmp_path):
    res = run_reuse(smol, NQ, "snapkv", 0.5, reuse=2, limit=1, max_new_tokens=4, distractors=1, progress=False)
    assert res["format"] == "nq" and res["n"] == 2 and res["compressor"] == "snapkv"
    with pytest.raises(ConfigError, match="--reuse must be an integer >= 1, got 0"):
        run_reuse(smol, KV, reuse=0)
    with pytest.raises(ConfigError, match="fewer than --reuse 40"):
        run_reuse(smol, KV, "snapkv", 0.5, reuse=40, limit=1, max_tokens=360, progress=False)
    out = tmp_path / "r.json"
    assert main(["eval", "kv", "--reuse", "0", "--data", str(KV), "--out", str(out)]) == 1
    assert not out.exists()


def test_ask_with_a_context_cache(tmp_path, capsys):
    """ask --context-cache: the first call compresses and saves, the second reuses; a tampered one is refused."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "mars.txt").write_text("Olympus Mons on Mars is the tallest volcano in the Solar System.\n")
    idx, cc = str(tmp_path / "idx"), tmp_path / "cc"
    assert main(["index", str(docs), "--index", idx]) == 0
    base = ["ask", "What is the tallest volcano?", "--index", idx, "--model", "smollm2-135m", "-k", "1"]
    base += ["--max-new-tokens", "4", "--context-cache", str(cc), "--json"]
    capsys.readouterr()
    assert main(base) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["kv"]["context_cache"]["state"] == "written" and first["kv"]["query_aware"] is False
    assert main(base) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["kv"]["context_cache"]["state"] == "reused" and again["text"] == first["text"]
    (cc / "kv.safetensors").write_bytes((cc / "kv.safetensors").read_bytes()[:100])
    assert main(base) == 1
    assert "truncated" in capsys.readouterr().err
