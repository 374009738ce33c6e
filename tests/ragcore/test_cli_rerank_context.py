"""ask --rerank / --compress-context and calibrate through the CLI: the stage reports, and clear errors."""

import json

from ragcore.cli import main


def test_ask_with_a_reranker_and_a_context_compressor(tmp_path, capsys):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "mars.txt").write_text("Olympus Mons on Mars is the tallest volcano. It is three times as tall as Everest.\n")
    (d / "moon.txt").write_text("The Moon causes tides. It has no atmosphere.\n")
    idx = str(tmp_path / "idx")
    assert main(["index", str(d), "--index", idx]) == 0
    capsys.readouterr()
    base = ["ask", "What is the tallest volcano?", "--index", idx, "--model", "smollm2-135m", "-k", "2"]
    base += ["--max-new-tokens", "4"]
    assert main([*base, "--rerank", "reversed", "--compress-context", "crag(k=1, sentences=1)", "--json"]) == 0
    stages = {r["kind"]: r for r in json.loads(capsys.readouterr().out)["stages"]}
    rr, cc = stages["reranker"], stages["context_compressor"]
    assert rr["label"] == "reversed" and len(rr["details"]["order"]) == 2 and rr["seconds"] >= 0
    assert cc["label"] == "crag(k=1, sentences=1)" and cc["items_out"] == 1
    assert 0 < cc["details"]["tokens_out"] < cc["details"]["tokens_in"]
    assert main([*base, "--rerank", "attnrnk"]) == 1
    assert "unknown reranker 'attnrnk' (did you mean 'attnrank'?)" in capsys.readouterr().err
    assert main(["calibrate", "--model", "smollm2-135m", "--limit", "201"]) == 1
    assert "--limit: calibration reads the development slice of 200 questions" in capsys.readouterr().err


def test_eval_longctx_bad_ratio_and_limit_get_one_line(capsys):
    base = ["eval", "longctx", "--model", "smollm2-135m", "--device", "cpu", "--tokens", "600", "--method", "snapkv"]
    for extra, said in (
        (["--ratio", "abc"], "--ratio takes one number for eval longctx, got 'abc'"),
        (["--limit", "0"], "limit must be"),
        (["--ratio", "1.5"], "ratio must be a number"),
    ):
        assert main([*base, *extra]) == 1
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err and "internal error" not in err
