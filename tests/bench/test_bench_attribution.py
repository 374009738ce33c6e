"""bench.attribution --from-json: a bad speed.json beside the suites' JSON is refused in one line."""

import shutil
from pathlib import Path

import pytest

from bench.attribution import main

SHARD = Path("docs/data/gpu/2026-11-30b/attribution/poisoned-0.json")


@pytest.mark.parametrize(("speed", "said"), [("not json", "not JSON"), ('{"suite": "crag"}', "not a poisoned result")])
def test_a_bad_speed_file_is_refused(tmp_path, capsys, speed, said):
    shutil.copy(SHARD, tmp_path / "poisoned.json")
    (tmp_path / "speed.json").write_text(speed)
    with pytest.raises(SystemExit) as e:
        main(["--from-json", "--out-dir", str(tmp_path)])
    assert e.value.code == 2 and said in capsys.readouterr().err


def test_a_good_speed_file_is_read(tmp_path, capsys):
    shutil.copy(SHARD, tmp_path / "poisoned.json")
    shutil.copy(SHARD, tmp_path / "speed.json")
    assert main(["--from-json", "--out-dir", str(tmp_path)]) == 0
    assert '"speed"' in capsys.readouterr().out


def _result(rows):
    """A PoisonedRAG result of the tracer 'attntrace' from (attacked, after round 1, changed, after K2=1, after K2=2)."""
    from eval.attribution import summarize_poisoned

    recs = [
        {
            "target": i,
            "shuffle": 0,
            "attacked": a,
            "generation_seconds": 1.0,
            "methods": {
                "attntrace": {
                    "seconds": 1.0,
                    "precision": 1.0,
                    "recall": 1.0,
                    "attacked_after_removal": r1,
                    "correct_after_removal": 1.0 - r1,
                    "changed": ch,
                    "second_round": {"1": {"attacked": k1, "correct": 0.0}, "2": {"attacked": k2, "correct": 0.0}},
                }
            },
        }
        for i, (a, r1, ch, k1, k2) in enumerate(rows)
    ]
    return {"suite": "poisoned", "n": len(recs), "data": "dev.json", **summarize_poisoned(recs, {"attntrace": "a"})}


def test_the_defence_is_chosen_on_the_development_run_and_decides_the_verdict():
    from bench.attribution import choose_defence, defence_rows, verdicts

    # K2=2 clears both missed attacks, K2=1 one of them: the lowest ASR wins
    dev = _result([(1.0, 1.0, 0.0, 1.0, 0.0), (1.0, 1.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0, 0.0)])
    assert defence_rows(dev)["one round"]["asr_defended"] == pytest.approx(2 / 3)
    assert choose_defence(dev) == "K2=2"
    # a tie goes to the setting that changes fewer answers: "if unchanged" before every answer
    tie = _result([(1.0, 1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0, 0.0)])
    assert choose_defence(tie) == "K2=1 if unchanged"
    nq = _result([(1.0, 1.0, 0.0, 1.0, 0.0)] + [(0.0, 0.0, 0.0, 0.0, 0.0)] * 19)
    nq["asr"] = {"mean": 0.05, "ci95": 0.1}
    nq["contextcite"] = nq["attntrace"]
    said = [v for v in verdicts({"poisoned": nq, "poisoned_dev": {**dev, "chosen_defence": "K2=2"}}) if "ASR" in v]
    assert said[0].startswith("Trace-and-remove ASR <= 0.10: **yes**") and "`K2=2`" in said[0]
    said = [v for v in verdicts({"poisoned": nq, "poisoned_dev": {**dev, "chosen_defence": "K2=1"}}) if "ASR" in v]
    assert "0.050 ± " in said[0] and "`K2=1`" in said[0]


def test_the_development_run_must_be_another_data_set_with_the_same_settings():
    from bench.attribution import choose_defence
    from ragcore.errors import ConfigError

    dev = {
        **_result([(1.0, 1.0, 0.0, 1.0, 0.0)]),
        "model": "m",
        "top_k": 5,
        "max_new_tokens": 32,
        "second_round": [1, 2],
    }
    nq = {**dev, "data": "nq.json"}
    assert choose_defence(dev, nq) == "K2=2 if unchanged"  # one unchanged answer: the two variants tie
    with pytest.raises(ConfigError, match="on the report's data"):
        choose_defence(dev, {**nq, "data": "/elsewhere/dev.json"})
    with pytest.raises(ConfigError, match="one model"):
        choose_defence(dev, {**nq, "model": "other"})
    with pytest.raises(ConfigError, match="one second_round"):
        choose_defence(dev, {**nq, "second_round": [1]})
    with pytest.raises(ConfigError, match="no second round"):
        choose_defence({**dev, "attntrace": {k: v for k, v in dev["attntrace"].items() if k != "second_round"}})
    with pytest.raises(ConfigError, match="no attntrace"):
        choose_defence({k: v for k, v in dev.items() if k != "attntrace"})


def test_a_broken_shard_is_named_in_one_line(tmp_path, capsys):
    for f in Path("docs/data/gpu/2026-11-30c/attribution").glob("poisoned_dev-*.json"):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "poisoned_dev-3.json").write_text("{not json")
    with pytest.raises(SystemExit) as e:
        main(["--from-json", "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "poisoned_dev-3.json: not JSON" in err and "Traceback" not in err


def test_speed_runs_given_are_all_shown_and_the_verdict_reads_the_last(tmp_path, capsys, monkeypatch):
    import json

    shutil.copy(SHARD, tmp_path / "poisoned.json")
    run = json.loads(SHARD.read_text())
    slow, fast = tmp_path / "slow.json", tmp_path / "fast.json"
    for path, cc in ((slow, 20.0), (fast, 2.0)):  # ContextCite 20x, then 2x AttnTrace's seconds per trace
        r = json.loads(json.dumps(run))
        r["attntrace"]["seconds_per_trace"], r["contextcite"]["seconds_per_trace"] = 1.0, cc
        path.write_text(json.dumps(r))
    written = {}
    monkeypatch.setattr("bench.attribution.write_section", lambda name, title, body: written.update(body=body))
    assert main(["--from-json", "--out-dir", str(tmp_path), "--speed", str(slow), str(fast), "--write-results"]) == 0
    text = written["body"]
    assert f"`{slow}`" in text and f"`{fast}`" in text
    assert "faster than ContextCite per traced answer: **no** (2.00x" in text
    with pytest.raises(SystemExit) as e:
        main(["--from-json", "--out-dir", str(tmp_path), "--speed", str(tmp_path / "missing.json")])
    assert e.value.code == 2 and "no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--speed", "x.json"], "for --from-json"),
        (["--from-json", "--speed", "SLOW", "SLOW"], "names a file twice"),
        (["--from-json", "--speed", "BARE"], "needs n and the positive seconds per trace"),
    ],
)
def test_speed_runs_that_cannot_be_read_are_refused(tmp_path, capsys, args, said):
    shutil.copy(SHARD, tmp_path / "poisoned.json")
    shutil.copy(SHARD, tmp_path / "slow.json")
    (tmp_path / "bare.json").write_text('{"suite": "poisoned"}')
    args = [str(tmp_path / f"{a.lower()}.json") if a.isupper() else a for a in args]
    with pytest.raises(SystemExit) as e:
        main([*args, "--out-dir", str(tmp_path), "--poisoned", "0", "--injection", "0", "--citations", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and said in err and "Traceback" not in err
