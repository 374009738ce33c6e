"""bench.kv_agnostic renders a question-agnostic matrix (paired changes, the best marked) and reuse results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.kv_agnostic import check_slices, main, matrix_table, pooled_table, reuse_table
from eval.kv_compression import merge_matrices
from ragcore.errors import ConfigError


def run(name: str, accs: list[float], **kw) -> dict:
    preds = [{"id": str(i), "accuracy": a} for i, a in enumerate(accs)]
    base = {"compressor": name, "ratio": 0.5, "accuracy": sum(accs) / len(accs), "accuracy_ci95": 0.1}
    return {**base, "n": len(accs), "kv_bytes": 50, "kv_bytes_full": 100, "predictions": preds, **kw}


def test_matrix_marks_the_best_paired_change():
    m = {"runs": [run("none", [1, 0, 1, 0]), run("kvzip", [1, 0, 1, 1]), run("h2o", [0, 0, 1, 0])]}
    table, best = matrix_table(m)
    assert best == "kvzip"
    assert "| kvzip | 0.5 | 0.750 | +25.0 ± " in table and "| h2o | 0.5 | 0.250 | -25.0 ± " in table
    assert table.count("**best**") == 1


def test_the_guard_data_rules_out_a_candidate_that_fails_there():
    """The best NQ-open change cannot be picked when it loses more than 3 points on key-value retrieval; a candidate
    the guard did not run cannot be picked either."""
    m = {"runs": [run("none", [1, 0, 1, 0]), run("a", [1, 1, 1, 1]), run("b", [1, 1, 1, 0]), run("c", [1, 1, 1, 1])]}
    g = {"format": "kv_retrieval", "runs": [run("none", [1, 1, 1, 1]), run("a", [0, 0, 0, 0]), run("b", [1, 1, 1, 1])]}
    table, best = matrix_table(m, g)
    assert best == "b" and matrix_table(m)[1] == "a"
    assert "| a | 0.5 | 1.000 | +50.0 ± " in table and "| -100.0 ± 0.0 |  |" in table and "| not run |  |" in table
    assert matrix_table(m, {**g, "runs": g["runs"][:2]})[1] == ""


def test_pooled_table_pairs_each_slice_with_its_own_full_cache():
    a = {"offset": 0, "n": 4, "runs": [run("none", [1, 1, 0, 0]), run("x", [1, 0, 0, 0]), run("only-a", [1, 1, 1, 1])]}
    b = {"offset": 100, "n": 4, "runs": [run("none", [0, 0, 0, 0]), run("x", [1, 1, 0, 0])]}
    t = pooled_table([a, b])
    assert "questions 1-4, 101-104 (8 questions)" in t and "only-a" not in t
    assert "| x | 0.5 | -25.0 ± " in t and " | +50.0 ± " in t and "| 8 | +12.5 ± " in t


def test_slices_that_cannot_be_pooled_are_refused():
    """Pooled slices share their settings, not their questions, and hold one ratio each."""
    a = {"offset": 0, "n": 2, "dtype": "float32", "runs": [run("none", [1, 1]), run("x", [1, 0])]}
    moved = [{**p, "id": str(10 + i)} for i, p in enumerate(a["runs"][0]["predictions"])]
    b = {**a, "offset": 10, "runs": [{**r, "predictions": moved} for r in a["runs"]]}
    check_slices([a, b], ["a", "b"])
    with pytest.raises(ConfigError, match="b cannot be pooled with a: dtype='bfloat16' \\(not 'float32'\\)"):
        check_slices([a, {**b, "dtype": "bfloat16"}], ["a", "b"])
    with pytest.raises(ConfigError, match="b holds question '0', which a holds too"):
        check_slices([a, a], ["a", "b"])
    two = {**b, "runs": [*b["runs"], {**b["runs"][1], "ratio": 0.75}]}
    with pytest.raises(ConfigError, match="several ratios \\[0.5, 0.75\\]"):
        check_slices([a, two], ["a", "b"])


def test_the_best_mark_is_one_run_when_a_compressor_runs_at_several_ratios():
    m = {"runs": [run("none", [1, 0, 1, 0]), run("x", [1, 1, 1, 0]), {**run("x", [1, 0, 0, 0]), "ratio": 0.75}]}
    table, best = matrix_table(m)
    assert best == "x" and table.count("**best**") == 1


def test_pooled_table_against_another_compressor():
    """--against pairs each compressor with another's run on the same questions instead of the full cache."""
    a = {"offset": 0, "n": 2, "runs": [run("none", [1, 1]), run("x", [1, 0]), run("y", [1, 1])]}
    b = {"offset": 10, "n": 2, "runs": [run("none", [0, 0]), run("x", [0, 0]), run("y", [1, 0])]}
    t = pooled_table([a, b], "x")
    assert "each paired with its slice's run of `x` (run of `x` per slice: 0.500, 0.000)" in t
    assert "| y | 0.5 | +50.0 ± " in t and "| 4 | +50.0 ± " in t and "| x |" not in t and "| none |" not in t
    with pytest.raises(ConfigError, match="'z'"):
        pooled_table([a, b], "z")
    shared = {**run("x", [1, 1]), "ratio": 0.0, "shared_baseline": True}  # a matrix's ratio-0 copy of the full cache
    assert pooled_table([{**a, "runs": [a["runs"][0], shared, *a["runs"][1:]]}, b], "x") == t


def test_matrices_and_single_runs_merge_and_name_the_best(tmp_path, capsys):
    """Candidates split over processes, and single runs (the full cache alone), are one table; other settings or
    other questions are refused naming the file."""
    head = {"data": "nq.jsonl", "format": "nq", "model": "m", "n": 4, "offset": 300, "query_aware": False, "k": 5}
    a = {**head, "runs": [run("none", [1, 0, 1, 0]), run("kvzip", [1, 0, 1, 0])]}
    b = {**head, "runs": [run("none", [1, 0, 1, 0]), run("kvzip(plus=True)", [1, 1, 1, 0])]}
    single = {**run("kvzip(safeguard=0.2)", [1, 1, 1, 1]), "format": "nq", "model": "m", "query_aware": False}
    other_ids = {**single, "predictions": [{**p, "id": "x" + p["id"]} for p in single["predictions"]]}
    paths = []
    for i, m in enumerate((a, b, {**b, "offset": 0}, single, other_ids)):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(m))
    m = merge_matrices([str(paths[0]), str(paths[1]), str(paths[3])])
    assert [r["compressor"] for r in m["runs"]] == ["none", "kvzip", "kvzip(plus=True)", "kvzip(safeguard=0.2)"]
    m = merge_matrices([str(paths[3]), str(paths[0])])  # a single run first: the settings come from the matrix
    assert m["offset"] == 300 and m["data"] == "nq.jsonl" and m["runs"][0]["compressor"] == "none"
    assert main(["--matrix", str(paths[0]), str(paths[1]), "--best"]) == 0
    assert capsys.readouterr().out.strip() == "kvzip(plus=True)"
    with pytest.raises(ConfigError, match="2.json"):
        merge_matrices([str(paths[0]), str(paths[2])])
    with pytest.raises(ConfigError, match="4.json' holds other questions"):
        merge_matrices([str(paths[0]), str(paths[4])])
    (tmp_path / "bf16.json").write_text(json.dumps({**single, "dtype": "bfloat16"}))
    (tmp_path / "f32.json").write_text(json.dumps({**a, "dtype": "float32"}))
    with pytest.raises(ConfigError, match="dtype='bfloat16' \\(not 'float32'\\)"):
        merge_matrices([str(tmp_path / "f32.json"), str(tmp_path / "bf16.json")])
    assert merge_matrices([str(paths[3]), str(tmp_path / "f32.json")])["dtype"] == "float32"  # kept from either
    # settings the answers depend on, bad files, a file twice, nothing to pick: refused in one line
    absolute = tmp_path / "abs.json"  # the same data file named by its absolute path
    absolute.write_text(json.dumps({**single, "data": str(Path("nq.jsonl").resolve()), "compressor": "h2o"}))
    assert merge_matrices([str(paths[0]), str(absolute)])["runs"][-1]["compressor"] == "h2o"
    other_k = {**single, "k": 3}
    (tmp_path / "k3.json").write_text(json.dumps(other_k))
    with pytest.raises(ConfigError, match="k=3 \\(not 5\\)"):
        merge_matrices([str(paths[0]), str(tmp_path / "k3.json")])
    (tmp_path / "log.txt").write_text("not json")
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    for bad, says in (("missing.json", "cannot be read"), ("log.txt", "cannot be read"), ("other.json", "not an")):
        with pytest.raises(ConfigError, match=says):
            merge_matrices([str(paths[0]), str(tmp_path / bad)])
    with pytest.raises(ConfigError, match="given twice"):
        merge_matrices([str(paths[0]), str(paths[0])])
    only_full = tmp_path / "full.json"
    only_full.write_text(json.dumps({**head, "runs": [run("none", [1, 0, 1, 0])]}))
    with pytest.raises(SystemExit):
        main(["--matrix", str(only_full), "--best"])
    assert "nothing to pick" in capsys.readouterr().err


def test_reuse_table_has_the_speedup_and_every_index():
    r = {"format": "kv_retrieval", "model": "m", "compressor": "kvzip", "ratio": 0.5, "contexts": 2, "reuse": 2,
         "mean_context_tokens": 900, "accuracy_full": 1.0, "accuracy_reuse": 0.75, "diff": -0.25, "diff_ci95": 0.3,
         "seconds_full": 40.0, "seconds_reuse": 10.0, "speedup": 4.0, "cpu_speedup": 3.5, "kv_bytes": 50,
         "kv_bytes_full": 100,
         "by_index": [{"index": 0, "accuracy_full": 1.0, "accuracy_reuse": 1.0},
                      {"index": 1, "accuracy_full": 1.0, "accuracy_reuse": 0.5}]}  # fmt: skip
    table = reuse_table([r])
    assert "| 4.00x | 3.50x | 0.500 |" in table and "-25.0 ± 30.0" in table
    del r["cpu_speedup"]  # a file written before processor time was measured
    assert "| 4.00x | - | 0.500 |" in reuse_table([r])
    r["timings"] = [{"context": "7", "tokens": 900, "compress_s": 6.0, "answer_s": [1.0, 3.0], "full_s": [20.0, 20.0],
                     "seconds_reuse": 10.0, "seconds_full": 40.0, "cpu_seconds_reuse": 8.0,
                     "cpu_seconds_full": 36.0}]  # fmt: skip
    assert "| 7 | 900 | 6.0 | 2.0 | 20.0 | 10.0 | 40.0 | 4.00x | 4.50x |" in reuse_table([r])
    assert "| reuse | 1.00 | 0.50 |" in table


def test_reuse_files_that_are_not_reuse_results_or_do_not_merge_are_usage_errors(tmp_path, capsys):
    matrix = tmp_path / "m.json"
    matrix.write_text(json.dumps({"format": "nq", "runs": [run("none", [1, 0])]}))
    with pytest.raises(SystemExit) as e:
        main(["--reuse", str(matrix)])
    assert e.value.code == 2 and "is not an `eval kv --reuse` result" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--reuse", str(tmp_path / "missing.json")])
    assert e.value.code == 2 and "--reuse:" in capsys.readouterr().err
    one = tmp_path / "r.json"
    one.write_text(json.dumps({"suite": "kv-reuse", "compressor": "kvzip"}))  # no per-context timings
    with pytest.raises(SystemExit) as e:
        main(["--reuse", str(one), "--merge", str(tmp_path / "out.json")])
    assert e.value.code == 2 and "--merge: a reuse result without per-context timings" in capsys.readouterr().err
