"""The `ragcore eval kv` suite: answer accuracy and KV bytes under a compressor, through the CLI."""

from __future__ import annotations

import pytest

from ragcore.errors import ConfigError


@pytest.mark.parametrize(
    ("data", "fmt", "compressor"),
    [("tests/data/kv_small.jsonl.gz", "kv", "snapkv"), ("tests/data/nq_small.jsonl.gz", "nq", "none")],
)
def test_cli_eval_kv(tmp_path, monkeypatch, data, fmt, compressor):
    import json

    from ragcore.cli import main

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


def test_cli_eval_kv_errors(tmp_path, capsys):
    from ragcore.cli import main

    base = ["eval", "kv", "--data", "tests/data/kv_small.jsonl.gz", "--model", "smollm2-135m", "--limit", "1"]
    assert main([*base, "--compressor", "quokka"]) == 2
    assert "'quokka'" in capsys.readouterr().err
    assert main([*base, "--compressor", "snapkv", "--ratio", "1.5"]) == 2
    assert "1.5" in capsys.readouterr().err
    assert main([*base, "--compressor", "snapkv", "--batch-size", "0"]) == 2
    assert "batch size must be a positive integer, got 0" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\n')
    assert main([*base[:2], "--data", str(bad), "--model", "smollm2-135m"]) == 2
    assert "unknown row format" in capsys.readouterr().err
    assert main([*base, "--max-tokens", "60"]) == 2
    assert "--max-tokens" in capsys.readouterr().err


def test_load_items_offset(smol):
    from eval.kv import load_items

    data = "tests/data/kv_small.jsonl.gz"
    _, every = load_items(smol, data, max_tokens=320, max_new_tokens=6, progress=False)
    _, tail = load_items(smol, data, limit=1, offset=1, max_tokens=320, max_new_tokens=6, progress=False)
    assert len(every) == 3 and [x.id for x in tail] == [every[1].id]
    assert tail[0].answers == every[1].answers
    with pytest.raises(ConfigError, match="--offset 3 skips all 3 items"):
        load_items(smol, data, offset=3, max_tokens=320, max_new_tokens=6, progress=False)
    with pytest.raises(ConfigError, match="--offset must be a non-negative integer, got -1"):
        load_items(smol, data, offset=-1, progress=False)
