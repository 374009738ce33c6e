"""eval kv --reuse: Q questions of one compressed context against Q full prefills, per question index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress.kv import DEFAULT_AGNOSTIC
from eval.datasets import read_jsonl
from eval.kv_reuse import kv_contexts, merge_reuse, run_reuse, summarise
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
    for flags in (["--limit", "0"], ["--query-aware"]):  # refused, not turned into a default or dropped
        assert main(["eval", "kv", "--reuse", "2", "--data", str(KV), "--out", str(out), *flags]) == 1
    assert not out.exists()


def test_reuse_of_the_full_cache_answers_as_full_prefills(smol):
    """--compressor none with --reuse: the context's full cache reused (no compression): every answer is the one
    a full prefill of the same prompt gives."""
    res = run_reuse(smol, KV, "none", reuse=3, limit=1, max_tokens=360, max_new_tokens=6, progress=False)
    assert res["compressor"] == "none" and res["kv_bytes"] == res["kv_bytes_full"]
    assert [p["reuse"] for p in res["predictions"]] == [p["full"] for p in res["predictions"]]


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
    assert again["kv"]["compressor"] == DEFAULT_AGNOSTIC[:-1] + ", ratio=0.5)"  # the question-agnostic default
    # flags that ask for another context than the saved one are refused, not ignored
    assert main([*base, "--compressor", "kvzip(safeguard=0.5)"]) == 1
    err = capsys.readouterr().err
    assert "holds a context compressed with" in err and "kvzip(safeguard=0.5, ratio=0.5)" in err
    assert main([*base, "--ratio", "0.9"]) == 1
    assert "ratio=0.9" in capsys.readouterr().err
    assert main([*base, "--query-aware"]) == 1
    assert "--query-aware does not apply" in capsys.readouterr().err
    assert main([*base, "--ratio", "0.5"]) == 0  # the saved context's own settings reuse it
    assert json.loads(capsys.readouterr().out)["kv"]["context_cache"]["state"] == "reused"
    # a spec without a ratio is compressed at the default ratio, not at none; "none" holds the full cache
    cc2, cc3 = tmp_path / "cc2", tmp_path / "cc3"
    assert main([*base[:-2], str(cc2), "--json", "--compressor", "kvzip(plus=True)"]) == 0
    kvzip = json.loads(capsys.readouterr().out)["kv"]
    assert kvzip["compressor"] == "kvzip(plus=True, ratio=0.5)"
    assert main([*base[:-2], str(cc3), "--json", "--compressor", "none"]) == 0
    kv = json.loads(capsys.readouterr().out)["kv"]
    assert kv["compressor"] == "none" and kvzip["kv_bytes"] < 0.8 * kv["kv_bytes"]
    # attribution flags, and a cache path that cannot be one, are refused before any work, naming the flag
    assert main([*base, "--defend"]) == 1
    assert "--context-cache: --defend do not apply" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad in (afile, afile / "sub"):
        assert main([*base[:-2], str(bad), "--json"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("ragcore: error: --context-cache:") and "a file, not a folder" in err
    assert afile.read_text() == "x"
    for bad, why in (("/proc/ragcore-ctx", "'/proc' is not writable"), ("/", "holds no saved context")):
        assert main([*base[:-2], bad, "--json"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("ragcore: error: --context-cache:") and why in err and "Traceback" not in err
    (cc / "kv.safetensors").write_bytes((cc / "kv.safetensors").read_bytes()[:100])
    assert main(base) == 1
    assert "truncated" in capsys.readouterr().err


def _result(ctx: str, full: list[float], reuse: list[float], seconds: tuple[float, float], **kw) -> dict:
    """A run_reuse result of one context (synthetic: its answers, timings and settings)."""
    preds = [{"context": ctx, "index": j, "accuracy_full": f, "accuracy_reuse": r}
             for j, (f, r) in enumerate(zip(full, reuse))]  # fmt: skip
    timing = {"context": ctx, "tokens": 100, "seconds_full": seconds[0], "seconds_reuse": seconds[1],
              "cpu_seconds_full": seconds[0] / 2, "cpu_seconds_reuse": seconds[1] / 2, "kv_bytes": 50,
              "kv_bytes_full": 100}  # fmt: skip
    head = {"suite": "kv-reuse", "data": "d", "format": "kv_retrieval", "model": "m", "compressor": "kvzip",
            "ratio": 0.5, "reuse": len(full), "max_new_tokens": 8, "query_aware": False, "offset": 0}  # fmt: skip
    return {**head, **kw, **summarise(preds, [timing], len(full)), "predictions": preds}


def test_merge_joins_contexts_and_refuses_other_settings():
    a = _result("a", [1, 1], [1, 0], (40.0, 10.0))
    b = _result("b", [0, 1], [0, 1], (20.0, 10.0), offset=1)
    m = merge_reuse([a, b])
    assert (m["contexts"], m["n"], m["offset"]) == (2, 4, 0)
    assert m["accuracy_full"] == 0.75 and m["accuracy_reuse"] == 0.5 and m["diff"] == -0.25
    assert m["speedup"] == 3.0 and m["cpu_speedup"] == 3.0 and m["seconds_full"] == 60.0
    assert [x["accuracy_reuse"] for x in m["by_index"]] == [0.5, 0.5]
    assert m["kv_bytes"] == 50 and len(m["timings"]) == 2
    with pytest.raises(ConfigError, match="compressor 'snapkv'"):
        merge_reuse([a, _result("c", [1, 1], [1, 1], (1.0, 1.0), compressor="snapkv")])
    with pytest.raises(ConfigError, match=r"contexts \['a'\] appear in more than one"):
        merge_reuse([a, a])
    with pytest.raises(ConfigError, match="without per-context timings"):
        merge_reuse([a, {k: v for k, v in b.items() if k != "timings"}])
    # the dtype: compared where both recorded it, kept in the merge
    assert merge_reuse([a, {**b, "dtype": "float32"}])["dtype"] == "float32" and "dtype" not in m
    with pytest.raises(ConfigError, match="dtype 'bfloat16' and 'float32'"):
        merge_reuse([{**a, "dtype": "float32"}, {**b, "dtype": "bfloat16"}])


def test_key_value_contexts_are_named_by_their_row_in_the_file(smol):
    """Runs over different --offset (one context each) name their contexts apart, so they can be merged."""
    rows = read_jsonl(KV)
    assert [c.id for c in kv_contexts(smol, rows[1:3], 2, 340, first=1)] == ["1", "2"]


def test_contexts_of_several_rows_hold_their_records_in_order(smol):
    """--rows-per-context N: N consecutive rows' records make one context (rows 1-2 and 3-4 here), named by its
    first and last row; a budget that fits more than one row's records reaches into the next row's."""
    rows = read_jsonl(KV)
    one_row = len(smol.tokenizer(json.dumps(dict(map(tuple, rows[1]["ordered_kv_records"])), indent=1)).input_ids)
    got = kv_contexts(smol, rows[1:3], 3, one_row * 9 // 5, first=1, rows_per_context=2)
    assert [c.id for c in got] == ["1+2"]
    shown = json.loads(got[0].passages[0].text)
    first_row = dict(map(tuple, rows[1]["ordered_kv_records"]))
    assert list(shown)[: len(first_row)] == list(first_row)  # the first row whole, then the next row's records
    assert len(shown) > len(first_row) and set(shown) - set(first_row) <= {k for k, _ in rows[2]["ordered_kv_records"]}
    assert any(q for q, _ in got[0].questions if q.split('"')[1] not in first_row)  # keys asked of both rows
    with pytest.raises(ConfigError, match=r"rows 2\.\. of a context of 2 rows would not be shown"):
        kv_contexts(smol, rows[1:3], 3, one_row // 2, first=1, rows_per_context=2)
    with pytest.raises(ConfigError, match="repeat a key"):
        kv_contexts(smol, [rows[1], rows[1]], 3, one_row + 400, rows_per_context=2)
    with pytest.raises(ConfigError, match="too few for --offset"):
        run_reuse(smol, KV, limit=2, rows_per_context=2, progress=False)
    with pytest.raises(ConfigError, match="key-value retrieval data only"):
        run_reuse(smol, None, rows_per_context=2, progress=False)


def test_reuse_with_batches_gives_the_answers_one_by_one_gives(smol):
    """--batch-size decodes the questions together in both arms (ask_batch, generate_batch): the same greedy
    answers as one by one, and the setting is recorded (a merge refuses mixed settings)."""
    kw = dict(reuse=3, limit=1, max_tokens=360, max_new_tokens=6, progress=False)
    one = run_reuse(smol, KV, "kvzip", 0.5, **kw)
    two = run_reuse(smol, KV, "kvzip", 0.5, batch_size=2, **kw)
    for key in ("reuse", "full"):
        assert [p[key] for p in two["predictions"]] == [p[key] for p in one["predictions"]], key
    assert one["batch_size"] == 1 and two["batch_size"] == 2
    with pytest.raises(ConfigError, match="batch_size 2 and 1"):
        merge_reuse([one, {**two, "timings": [{**t, "context": "other"} for t in two["timings"]]}])
    with pytest.raises(ConfigError, match="--batch-size must be an integer >= 1"):
        run_reuse(smol, KV, batch_size=0)


def test_reuse_takes_a_specs_own_ratio_or_budget_and_records_it(smol, capsys):
    """A ratio or budget written in the spec is the one used and recorded; --max-new-tokens 0 and a ratio that
    is not a number are refused with their reason."""
    res = run_reuse(smol, KV, "snapkv(ratio=0.3)", reuse=2, limit=1, max_tokens=360, max_new_tokens=3, progress=False)
    assert res["compressor"] == "snapkv" and res["ratio"] == 0.3
    res = run_reuse(smol, KV, "snapkv(budget=50)", reuse=2, limit=1, max_tokens=360, max_new_tokens=3, progress=False)
    assert res["compressor"] == "snapkv(budget=50)" and 0 < res["kv_bytes"] < res["kv_bytes_full"]
    assert (
        run_reuse(smol, KV, "none", 0.3, reuse=2, limit=1, max_tokens=360, max_new_tokens=3, progress=False)["ratio"]
        == 0
    )
    with pytest.raises(ConfigError, match="max-new-tokens must be an integer >= 1, got 0"):
        run_reuse(smol, KV, reuse=2, max_new_tokens=0)
    base = ["eval", "kv", "--data", str(KV), "--limit", "1"]
    assert main([*base, "--reuse", "2", "--ratio", "abc"]) == 1
    assert "a ratio as a number, got 'abc'" in capsys.readouterr().err
    assert main([*base, "--max-new-tokens", "0"]) == 1
    assert "--max-new-tokens must be at least 1, got 0" in capsys.readouterr().err
    assert main([*base, "--compressor", "snapkv(ratio=0.3)"]) == 1  # without --reuse: the ratio goes in --ratio
    assert "give it as --ratio R" in capsys.readouterr().err
