"""bench.sdpa_backends --compare: runs side by side, each model's cuDNN-off run as a ratio of its default; runs
that cannot be compared are refused in one line."""

import json

import pytest

from bench.sdpa_backends import main


def _run(cudnn, decode_ms, seconds, lengths=(1000,), model="m"):
    return {
        "model": model,
        "gpu": "G",
        "torch": "t",
        "cudnn": cudnn,
        "prefill": [{"tokens": n, "first_ms": 9.0, "again_ms": 1.0} for n in lengths],
        "decode": {"tokens": 64, "steps": 3, "median_ms": decode_ms, "mean_ms": decode_ms},
        "longctx": {"method": "infiniretri", "tokens": 2048, "n": 2, "accuracy": 1.0, "seconds_per_query": seconds},
    }


def _files(tmp_path, *runs):
    paths = []
    for i, r in enumerate(runs):
        p = tmp_path / f"r{i}.json"
        p.write_text(r if isinstance(r, str) else json.dumps(r))
        paths.append(str(p))
    return paths


def test_compare_shows_the_speedup_of_cudnn_off(tmp_path, capsys):
    assert main(["--compare", *_files(tmp_path, _run("default", 50.0, 2.0), _run("off", 10.0, 0.5))]) == 0
    out = capsys.readouterr().out
    assert "| m | 1.00x | 5.00x | 4.00x |" in out
    assert "| m | off | 9.0 / 1.0 | 10.0 | `infiniretri` | 0.500 | 1.00 |" in out


@pytest.mark.parametrize(
    ("runs", "said"),
    [
        (["not json"], "cannot be read"),
        ([{"suite": "poisoned"}], "is not a run"),
        ([_run("default", 5, 1), _run("off", 5, 1, lengths=(1000, 2000))], "at other sizes"),
        ([_run("default", 5, 1), _run("default", 6, 1)], "a second 'default' run"),
        ([{**_run("default", 5, 1), "cudnn": "sometimes"}], "wrong type"),
        ([_run("default", "x", 1)], "wrong type"),
        (
            [_run("default", 5, 1), {**_run("off", 5, 1), "longctx": {**_run("off", 5, 1)["longctx"], "method": "x"}}],
            "the other run of 'm' timed",
        ),
    ],
)
def test_runs_that_cannot_be_compared_are_refused(tmp_path, capsys, runs, said):
    with pytest.raises(SystemExit) as e:
        main(["--compare", *_files(tmp_path, *runs)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and said in err and "Traceback" not in err


def test_bad_measurement_arguments_are_refused_before_loading_a_model(tmp_path, capsys):
    for args, said in (
        (["--out", str(tmp_path / "x.md")], "ends in .md"),
        (["--out", str(tmp_path / "x.json"), "--lengths", "1,a"], "whole numbers"),
        (["--out", str(tmp_path)], "is a folder"),
        (["--out", str(tmp_path / "x.json"), "--method", "bogus("], "--method"),
        (["--out", str(tmp_path / "x.json"), "--offset", "-5"], "--offset must be >= 0, got -5"),
        (["--write-results", "s"], "needs --compare"),
    ):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2 and said in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--compare", str(tmp_path / "missing.json")])
    assert "cannot be read" in capsys.readouterr().err
