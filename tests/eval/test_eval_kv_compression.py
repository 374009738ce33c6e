"""eval.kv_compression: the suite behind `ragcore eval kv`, one run and a compressor x ratio matrix."""

from __future__ import annotations

import gzip
import json

import pytest

from eval import kv_compression
from eval.kv_compression import KVSuite, format_name, load_items, merge_matrices
from ragcore.cli import main
from ragcore.errors import ConfigError

KV_DATA = "tests/data/kv_small.jsonl.gz"
NQ_DATA = "tests/data/nq_small.jsonl.gz"
SMALL = ["--limit", "2", "--k", "2", "--max-tokens", "320", "--max-new-tokens", "6", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("data", "fmt", "compressor"), [(KV_DATA, "kv_retrieval", "snapkv"), (NQ_DATA, "nq", "none")])
def test_cli_eval_kv(tmp_path, monkeypatch, data, fmt, compressor):
    monkeypatch.setattr("eval.runner.cache_dir", lambda: tmp_path / "cache")
    out = tmp_path / "kv.json"
    args = ["eval", "kv", "--data", data, "--compressor", compressor, "--ratio", "0.5", "--model", "smollm2-135m"]
    args += ["--limit", "2", "--k", "2", "--max-tokens", "320", "--max-new-tokens", "6", "--out", str(out)]
    assert main([*args, "--device", "cpu"]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 2 and res["format"] == fmt and res["model"] == "smollm2-135m"
    assert {"accuracy", "accuracy_ci95", "kv_bytes", "kv_bytes_full", "prefill_s", "decode_tok_s"} <= set(res)
    assert 0 <= res["accuracy"] <= 1 and res["prefill_s"] > 0
    assert res["mean_prompt_tokens"] <= 320 - 6
    if compressor == "none":
        assert res["kv_bytes"] == res["kv_bytes_full"] and res["ratio"] == 0.0
    else:
        assert res["kv_bytes"] < 0.8 * res["kv_bytes_full"] and res["compressor"] == compressor
    assert main([*args[:-1], str(tmp_path / "kv2.json"), "--device", "cpu", "--batch-size", "2"]) == 0
    batched = json.loads((tmp_path / "kv2.json").read_text())
    assert batched["predictions"] == res["predictions"] and batched["batch_size"] == 2
    assert res["dtype"] == "float32"  # the device's default, recorded
    if compressor == "none":  # --dtype loads the generator so and records it
        assert main([*args[:-1], str(tmp_path / "kv3.json"), "--device", "cpu", "--dtype", "bfloat16"]) == 0
        low = json.loads((tmp_path / "kv3.json").read_text())
        assert low["dtype"] == "bfloat16" and low["n"] == 2 and low["prefill_s"] > 0


def test_cli_eval_kv_errors(tmp_path, capsys):
    base = ["eval", "kv", "--data", KV_DATA, "--model", "smollm2-135m", "--limit", "1"]
    assert main([*base, "--compressor", "quokka"]) == 1
    assert "'quokka'" in capsys.readouterr().err
    assert main([*base, "--compressor", "snapkv", "--ratio", "1.5"]) == 1
    assert "1.5" in capsys.readouterr().err
    assert main([*base, "--compressor", "snapkv", "--batch-size", "0"]) == 1
    assert "batch size must be a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # a usage error, before anything loads
        main([*base, "--dtype", "float8"])
    assert e.value.code == 2 and "'float8'" in capsys.readouterr().err
    assert main(["eval", "qa", "--dtype", "bfloat16", "--limit", "1"]) == 1  # kv only, refused before loading
    assert "--dtype applies to eval kv only, not qa" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\n')
    assert main([*base[:2], "--data", str(bad), "--model", "smollm2-135m"]) == 1
    assert "unknown row format" in capsys.readouterr().err
    assert main([*base, "--max-tokens", "60"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ragcore: error: --max-tokens: max_tokens=60 leaves no room") and "Traceback" not in err


def test_load_items_offset(smol):
    _, every = load_items(smol, KV_DATA, max_tokens=320, max_new_tokens=6, progress=False)
    _, tail = load_items(smol, KV_DATA, limit=1, offset=1, max_tokens=320, max_new_tokens=6, progress=False)
    assert len(every) == 3 and [x.id for x in tail] == [every[1].id]
    assert tail[0].answers == every[1].answers
    with pytest.raises(ConfigError, match="offset 3 skips all 3 items"):
        load_items(smol, KV_DATA, offset=3, max_tokens=320, max_new_tokens=6, progress=False)
    with pytest.raises(ConfigError, match="^offset must be a non-negative integer, got -1"):
        load_items(smol, KV_DATA, offset=-1, progress=False)


def test_cli_matrix_holds_every_run_and_each_equals_its_single_run(tmp_path, capsys):
    """`--compressor a,b --ratio r1,r2`: one JSON with the full cache first, then every compressor at every ratio
    (a spec with commas inside brackets stays one compressor); ratio 0 is the shared full-cache run; a cell of the
    matrix is the single run of that compressor and ratio, key for key and answer for answer."""
    chunk = "chunk(chunk_size=5,share_heads=False):snapkv"
    out = tmp_path / "m.json"
    args = ["eval", "kv", "--data", KV_DATA, "--model", "smollm2-135m", "--out", str(out), *SMALL]
    assert main([*args, "--compressor", f"snapkv, {chunk}", "--ratio", "0,0.5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    m = json.loads(out.read_text())
    assert m["complete"] is True and m["format"] == "kv_retrieval" and m["n"] == 2
    assert m["compressors"] == ["snapkv", chunk] and m["ratios"] == [0.0, 0.5]
    cells = [(r["compressor"], r["ratio"], bool(r.get("shared_baseline"))) for r in m["runs"]]
    label = "chunk(chunk_size=5, share_heads=False):snapkv"
    assert cells == [("none", 0.0, False), ("snapkv", 0.0, True), ("snapkv", 0.5, False), (label, 0.0, True),
                     (label, 0.5, False)]  # fmt: skip
    assert m["runs"][1]["predictions"] == m["runs"][0]["predictions"]
    assert all("predictions" not in r for r in printed["runs"]) and len(printed["runs"]) == 5
    single = tmp_path / "s.json"
    assert (
        main([*args[: -len(SMALL) - 2], "--out", str(single), *SMALL, "--compressor", "snapkv", "--ratio", "0.5"]) == 0
    )
    one = json.loads(single.read_text())
    cell = m["runs"][2]
    settings = {"data", "offset", "k", "max_tokens", "max_new_tokens", "dtype"}  # a single run also names its questions
    assert set(one) - set(cell) == settings and all(one[k] == m[k] for k in settings)
    assert cell["predictions"] == one["predictions"] and cell["kv_bytes"] == one["kv_bytes"]


def test_matrix_refuses_bad_arguments_before_loading_a_model(monkeypatch):
    def no_model(*_a, **_k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(kv_compression, "Generator", no_model)
    suite = KVSuite()
    with pytest.raises(ConfigError, match="'quokka'"):
        suite.matrix(KV_DATA, ["snapkv", "quokka"], [0.5])
    with pytest.raises(ConfigError, match=r"ratios must be in \[0, 1\), got 1.0"):
        suite.matrix(KV_DATA, ["snapkv"], [0.5, 1.0])
    with pytest.raises(ConfigError, match="'none' is the matrix's full-cache baseline"):
        suite.matrix(KV_DATA, ["none", "snapkv"], [0.5])
    with pytest.raises(ConfigError, match="ratio 0 is the full-cache baseline"):
        suite.matrix(KV_DATA, ["snapkv"], [0.0, 0.5], baseline=False)
    with pytest.raises(ConfigError, match="at least one compressor"):
        suite.matrix(KV_DATA, [], [0.5])
    with pytest.raises(ConfigError, match="'quokka'"):
        suite.run(KV_DATA, "quokka", 0.5)
    with pytest.raises(ConfigError, match="batch size must be a positive integer, got 0"):
        KVSuite(batch_size=0)


def _run(name: str, ratio: float, right: list[int]) -> dict:
    preds = [{"id": f"q{i}", "accuracy": float(r)} for i, r in enumerate(right)]
    return {"compressor": name, "ratio": ratio, "accuracy": sum(right) / len(right), "predictions": preds}


def _matrix(tmp_path, name: str, fmt: str, runs: list[dict], gz: bool = False) -> str:
    d = {"data": "kv.jsonl.gz", "format": fmt, "model": "m", "n": 2, "query_aware": False, "complete": True}
    p = tmp_path / (f"{name}.json.gz" if gz else f"{name}.json")
    text = json.dumps({**d, "runs": runs})
    p.write_bytes(gzip.compress(text.encode())) if gz else p.write_text(text)
    return str(p)


def test_merge_matrices_reads_old_format_names_and_keeps_the_later_rerun(tmp_path):
    a = _matrix(tmp_path, "a", "kv", [_run("none", 0.0, [1, 1]), _run("snapkv", 0.5, [0, 0])], gz=True)
    b = _matrix(tmp_path, "b", "kv_retrieval", [_run("knorm", 0.5, [1, 0]), _run("snapkv", 0.5, [1, 1])])
    m = merge_matrices([a, b])
    assert m["format"] == "kv_retrieval" and m["offset"] == 0 and m["merged_from"] == [a, b]
    assert [(r["compressor"], r["accuracy"]) for r in m["runs"]] == [("none", 1.0), ("snapkv", 1.0), ("knorm", 0.5)]
    assert m["compressors"] == ["snapkv", "knorm"] and m["ratios"] == [0.0, 0.5] and m["complete"] is True
    other = _matrix(tmp_path, "c", "nq", [_run("none", 0.0, [1, 1])])
    with pytest.raises(ConfigError, match="is not the same matrix"):
        merge_matrices([a, other])
    with pytest.raises(ConfigError, match="no full-cache"):
        merge_matrices([b])


def test_format_names():
    assert format_name("kv") == "kv_retrieval" and format_name("kv_retrieval") == "kv_retrieval"
    assert format_name("nq") == "nq"
    assert kv_compression.score_answer("kv", "the value is abc-1", ["abc-1"]) == 1.0  # old files still score
    assert kv_compression.score_answer("kv_retrieval", "abc", ["abc-1"]) == 0.0
    assert kv_compression.score_answer("nq", "It was Paris.", ["paris"]) == 1.0
