import json

import pytest

from ragcore.cli import main

DATA = "tests/data/nq_small.jsonl.gz"


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "jupiter.md").write_text("# Jupiter\n\nThe Great Red Spot is a giant storm on Jupiter, larger than Earth.\n")
    (d / "mars.txt").write_text("Olympus Mons on Mars is the tallest volcano in the Solar System.\n")
    return d


def test_index_search_ask(tmp_path, corpus, capsys):
    idx = str(tmp_path / "idx")
    assert main(["index", str(corpus), "--index", idx]) == 0
    assert "2 new chunks" in capsys.readouterr().out
    assert main(["search", "tallest volcano", "--index", idx, "-k", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res[0]["chunk"]["source_id"].endswith("mars.txt") and {"bm25", "dense", "hybrid"} <= set(res[0]["scores"])
    assert (
        main(
            [
                "ask",
                "What is the tallest volcano?",
                "--index",
                idx,
                "--model",
                "smollm2-135m",
                "-k",
                "2",
                "--max-new-tokens",
                "16",
                "--json",
            ]
        )
        == 0
    )
    ans = json.loads(capsys.readouterr().out)
    assert ans["text"] and ans["citations"] and ans["model"] == "smollm2-135m"
    assert all(c["source_id"] for c in ans["citations"])
    # adding a file updates the index in place, as a new version
    (corpus / "saturn.md").write_text("Saturn's rings are made of ice.\n")
    assert main(["index", str(corpus), "--index", idx]) == 0
    assert "1 new chunks, 3 in all" in capsys.readouterr().out


def test_clear_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["index", str(empty), "--index", str(tmp_path / "i")]) == 1  # a user error (issue 12: usage is 2)
    assert "nothing to index" in capsys.readouterr().err
    assert main(["search", "x", "--index", str(tmp_path / "none")]) == 1
    assert "no index at" in capsys.readouterr().err
    (empty / "blank.txt").write_text("   \n\n")
    assert main(["index", str(empty), "--index", str(tmp_path / "i")]) == 1
    assert "no text" in capsys.readouterr().err


def test_ask_errors(tmp_path, corpus, capsys):
    idx = str(tmp_path / "idx")
    main(["index", str(corpus), "--index", idx])
    capsys.readouterr()
    assert main(["ask", "   ", "--index", idx, "--model", "smollm2-135m"]) == 1
    assert "query must contain text" in capsys.readouterr().err
    assert main(["ask", "hi", "--index", idx, "--model", "nope-model"]) == 1
    assert "unknown model 'nope-model'" in capsys.readouterr().err


def test_ask_with_a_kv_compressor(tmp_path, corpus, capsys):
    """ask --compressor: the answer says how many KV bytes the cache held; without one it holds them all."""
    idx = str(tmp_path / "idx")
    main(["index", str(corpus), "--index", idx])
    capsys.readouterr()
    base = ["ask", "What is the tallest volcano?", "--index", idx, "--model", "smollm2-135m", "-k", "2"]
    base += ["--max-new-tokens", "8"]
    assert main([*base, "--json"]) == 0
    full = json.loads(capsys.readouterr().out)["kv"]
    assert full["compressor"] == "none" and full["kv_bytes"] == full["kv_bytes_full"] > 0
    assert main([*base, "--compressor", "snapkv", "--ratio", "0.5", "--query-aware", "--json"]) == 0
    kv = json.loads(capsys.readouterr().out)["kv"]
    assert kv["compressor"] == "snapkv" and kv["query_aware"] is True
    assert kv["kv_bytes_full"] == full["kv_bytes_full"] and kv["kv_bytes"] < 0.6 * kv["kv_bytes_full"]
    assert main([*base, "--compressor", "knorm", "--ratio", "0.75"]) == 0
    out = capsys.readouterr().out
    assert "KV cache: " in out and "MiB held (knorm, ratio 0.75)" in out
    assert main([*base, "--compressor", "snapkv2"]) == 1
    assert "unknown kv_compressor 'snapkv2' (did you mean 'snapkv'?)" in capsys.readouterr().err


def test_ask_compressor_spec_and_ratio(tmp_path, corpus, capsys):
    """Field report: --compressor "snapkv(ratio=0.9)" ran at --ratio's default and said 0.5. The spec's own ratio
    is used; one given both ways is refused; a missing bracket and an unknown option are named."""
    idx = str(tmp_path / "idx")
    main(["index", str(corpus), "--index", idx])
    capsys.readouterr()
    base = ["ask", "What is the tallest volcano?", "--index", idx, "--model", "smollm2-135m", "-k", "2"]
    base += ["--max-new-tokens", "4"]
    assert main([*base, "--compressor", "snapkv(ratio=0.9)"]) == 0
    assert "(snapkv, ratio 0.9)" in capsys.readouterr().out
    assert main([*base, "--compressor", "knorm(budget=8)"]) == 0
    assert "(knorm, ratio 0.0)" in capsys.readouterr().out
    assert main([*base, "--compressor", "snapkv(ratio=0.9)", "--ratio", "0.5"]) == 1
    assert capsys.readouterr().err.startswith("ragcore: error: --ratio: ratio is set twice")
    assert main([*base, "--compressor", "chunk(chunk_size=5:snapkv"]) == 1
    assert "unbalanced brackets" in capsys.readouterr().err
    assert main([*base, "--compressor", "snapkv(windw=4)"]) == 1
    err = capsys.readouterr().err
    assert "unknown option 'windw'" in err and "window, kernel_size" in err
    # each error names the flag whose value is at fault, also with --context-cache (before any loading)
    for args, flag, what in (
        (["--compressor", "kvzip(chunk=0)"], "--compressor", "chunk must be a positive integer, got 0"),
        (["--compressor", "kvzip", "--ratio", "1.5"], "--ratio", "got 1.5"),
        (["--compressor", "kvzip(chunk=0)", "--context-cache", str(tmp_path / "cc")], "--compressor", "got 0"),
    ):
        assert main([*base, *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"ragcore: error: {flag}: ") and what in err, err
    assert not (tmp_path / "cc").exists()
    assert main([*base, "--compress-context", "crag", "--ratio", "0.7"]) == 1  # --ratio would be ignored
    assert "--ratio 0.7 is the KV compressor's and needs --compressor NAME" in capsys.readouterr().err


def test_eval_retrieval_writes_the_stable_keys(tmp_path, monkeypatch):
    monkeypatch.setattr("eval.runner.cache_dir", lambda: tmp_path / "cache")
    out = tmp_path / "r.json"
    assert main(["eval", "retrieval", "--data", DATA, "--limit", "20", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res) == {"bm25", "dense", "hybrid"}
    for m in res.values():
        assert {"recall@1", "recall@5", "recall@20", "mrr", "ndcg@10"} <= set(m)
        assert 0 <= m["recall@1"] <= m["recall@5"] <= m["recall@20"] <= 1
    assert res["hybrid"]["recall@5"] >= 0.9
    assert (tmp_path / "r.md").read_text().startswith("| |")


@pytest.mark.parametrize("setting", ["closed", "oracle", "top5"])
def test_eval_qa(tmp_path, monkeypatch, setting):
    monkeypatch.setattr("eval.runner.cache_dir", lambda: tmp_path / "cache")
    out = tmp_path / "qa.json"
    args = ["eval", "qa", "--data", DATA, "--setting", setting, "--model", "smollm2-135m", "--limit", "3"]
    assert main([*args, "--out", str(out), "--max-new-tokens", "8"]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 3 and {"accuracy", "em", "f1"} <= set(res)
    assert 0 <= res["em"] <= res["accuracy"] <= 1 or res["em"] <= res["f1"]


def test_eval_bad_limit(capsys):
    assert main(["eval", "qa", "--data", DATA, "--limit", "0", "--model", "smollm2-135m"]) == 1
    assert "--limit" in capsys.readouterr().err


def test_eval_qa_on_dumped_retrieval(tmp_path, monkeypatch):
    """`eval retrieval --dump-retrieved` then `eval qa --retrieved`: the same top k, with no retriever loaded."""
    monkeypatch.setattr("eval.runner.cache_dir", lambda: tmp_path / "cache")
    dump = tmp_path / "ids.json"
    assert main(["eval", "retrieval", "--data", DATA, "--limit", "3", "--dump-retrieved", str(dump)]) == 0
    ids = json.loads(dump.read_text())
    assert len(ids) == 3 and all(len(v) == 20 for v in ids.values())
    out = tmp_path / "qa.json"
    args = ["eval", "qa", "--data", DATA, "--setting", "top5", "--model", "smollm2-135m", "--limit", "3"]
    assert main([*args, "--retrieved", str(dump), "--max-new-tokens", "4", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["n"] == 3
    assert main([*args[:-1], "5", "--retrieved", str(dump)]) == 1  # questions 4 and 5 are not in the file
