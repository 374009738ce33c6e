"""bench.compress_cost: a compressor's prefill in plain prefills, measured on a random model of qwen2.5-0.5b's
shape and rendered from its JSON; bad arguments are refused in one line."""

import json

import pytest

from bench.compress_cost import main


def test_a_run_writes_its_json_and_renders_each_spec_in_plain_prefills(tmp_path, capsys):
    out = tmp_path / "cost.json"
    args = ["--tokens", "40", "--layers", "1", "--repeats", "2", "--specs", "none", "kvzip", "--json", str(out)]
    assert main(args) == 0
    res = json.loads(out.read_text())
    assert res["layers"] == 1 and res["ratio"] == 0.5
    (row,) = res["rows"]
    assert row["tokens"] == 40 and set(row["seconds"]) == {"none", "kvzip"}
    assert all(len(v) == 2 and min(v) > 0 for v in row["seconds"].values())
    capsys.readouterr()
    assert main(["--render", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| cost | cpu | float32 | 1 | 40 | `none` | 2 |" in table and "| 1.00 (1.00-1.00) |" in table
    assert "`kvzip`" in table


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--tokens", "1"], "--tokens must be at least 2"),
        (["--ratio", "1.5"], "--ratio must be in (0, 1)"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--device", "tpu"], "--device must be cpu or cuda"),
        (["--profile", "wall"], "invalid choice"),
        (["--specs", "kvzip(chunk=0)"], "--specs: chunk must be a positive integer, got 0"),
        (["--specs", "nosuch"], "--specs:"),
        (["--specs", "none", "none"], "names a spec twice"),
        (["--note", "x"], "go with --render"),
        (["--json", "/"], "cannot be written"),
        (["--render", "/no/such.json"], "cannot be read"),
        (["--render", __file__], "cannot be read"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(args, said, capsys):
    """Refused before any model loads (a run would take minutes), in one line."""
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and said in err and "Traceback" not in err


def test_a_file_of_another_driver_is_refused_in_one_line(tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"suite": "kv-reuse"}))
    with pytest.raises(SystemExit) as e:
        main(["--render", str(other)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "not all runs of this driver" in err and "Traceback" not in err
