"""bench.kv_side_by_side: a row's summary (paired accuracy difference, agreement, time basis) and its section, on
hand-made items; and the compressor fields matched to a press (bench.peers.kvpress.match)."""

from __future__ import annotations

import importlib.util
import types

import pytest

from bench import kv_side_by_side as sxs
from bench.peers.kvpress.match import ours_kwargs
from ragcore.errors import ConfigError


def _item(i: int, ours_right: int, theirs_right: int, same: bool, prefill: float | None) -> dict:
    o = {"text": "Paris" if same else "Lyon", "token_ids": [1, 2] if same else [3], "accuracy": float(ours_right),
         "context_prefill_s": prefill, "ttft_s": 0.2, "kv_bytes": 100, "kv_tokens": 10}  # fmt: skip
    t = {"text": "paris", "token_ids": [1, 2], "accuracy": float(theirs_right), "compressed": True,
         "prefill_s": 0.05, "ttft_s": 0.4, "kv_bytes": 120, "kv_tokens": 12}  # fmt: skip
    return {"id": f"q{i}", "answers": ["Paris"], "context_tokens": 20, "prompt_tokens": 30, "ours": o, "theirs": t}


def test_summary_is_paired_per_item():
    rows = [
        _item(0, 1, 1, True, 0.1),
        _item(1, 0, 1, False, 0.1),
        _item(2, 1, 0, False, 0.1),
        _item(3, 1, 1, True, 0.1),
    ]
    s = sxs.summarize("knorm", 0.5, None, None, rows)
    assert s["accuracy_ours"] == s["accuracy_theirs"] == 0.75 and s["accuracy_diff"] == 0.0
    assert s["accuracy_diff_ci95"] == pytest.approx(1.96 * (2 / 3) ** 0.5 / 2)  # differences 0, -1, +1, 0
    assert s["agreement"] == 0.5 and s["same_tokens"] == 0.5
    assert s["time_basis"] == "context_prefill" and s["time_ratio_of_medians"] == pytest.approx(2.0)
    assert sxs.summarize("none", 0.0, None, None, [_item(0, 1, 1, True, None)])["time_basis"] == "ttft"


def test_section_renders_the_rows(monkeypatch):
    rows = [_item(0, 1, 1, True, 0.1), _item(1, 0, 1, False, 0.1)]
    row = sxs.summarize("knorm", 0.5, None, None, rows)
    meta = {"model": "/m/qwen.gguf", "data": "nq.jsonl.gz", "k": 5, "device_name": "cpu", "dtype": "float32",
            "attn_implementation": "sdpa", "match_kept": True,
            "versions": {"kvpress": "0.5.5", "transformers": "5.2.0", "torch": "2.13"}}  # fmt: skip
    got = {}
    monkeypatch.setattr(sxs, "write_section", lambda name, title, body: got.update(name=name, body=body))
    sxs.write_results("s", {"meta": meta, "rows": [row]}, note="Here.")
    assert got["name"] == "s" and got["body"].startswith("Here.\n\nqwen.gguf on nq.jsonl.gz (k = 5), cpu, float32")
    assert (
        "| knorm | 0.50 | 2 | 0.500 ± 0.980 | 1.000 ± 0.000 | -0.500 ± 0.980 | 0.50 | context_prefill |" in got["body"]
    )
    assert "Ours is" not in got["body"] and "kvpress's defaults, matched" in got["body"]
    sxs.write_results("s", {"meta": {**meta, "ours": "kvzip(plus=True)"}, "rows": [row]})
    assert "Ours is `kvzip(plus=True)` in every row" in got["body"] and "matched on ragcore" not in got["body"]


def test_ours_spec_is_checked_before_any_model_loads(capsys):
    with pytest.raises(SystemExit):
        sxs.main(["--model", "m", "--out", "x.json", "--methods", "knorm", "--ours", "kvzip(nope=1)"])
    assert "--ours" in capsys.readouterr().err


def test_without_kvpress_one_line_says_where_to_run(capsys):
    pytest.importorskip("transformers")
    if importlib.util.find_spec("kvpress") is not None:
        pytest.skip("kvpress is installed here")
    with pytest.raises(SystemExit):
        sxs.main(["--model", "m", "--out", "x.json", "--methods", "knorm"])
    err = capsys.readouterr().err
    assert "kvpress" in err and "environment" in err and "Traceback" not in err


def test_ours_kwargs_match_the_press():
    press = types.SimpleNamespace(window_size=64, kernel_size=5, n_sink=4)
    assert ours_kwargs("snapkv", press, 0.5, 100, match_kept=True) == {
        "ratio": 0.5,
        "window": 64,
        "kernel_size": 5,
        "budget": 50,
    }
    assert ours_kwargs("streaming_llm", press, 0.75, 101, match_kept=False) == {"ratio": 0.75, "n_sink": 4}
    zip_press = types.SimpleNamespace(n_sink=4, layerwise=False)
    assert ours_kwargs("kvzip", zip_press, 0.5, 100, match_kept=False) == {"ratio": 0.5, "n_sink": 4, "scope": "global"}
    with pytest.raises(ConfigError, match="no ragcore counterpart"):
        ours_kwargs("h2o", press, 0.5, 100, match_kept=False)
