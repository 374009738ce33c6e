"""bench.kv_agnostic renders a question-agnostic matrix (paired changes, the best marked) and reuse results."""

from __future__ import annotations

import json

import pytest

from bench.kv_agnostic import main, matrix_table, merge_matrices, reuse_table


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


def test_matrices_of_one_slice_merge_and_name_the_best(tmp_path, capsys):
    """Candidates split over processes are one table against the first file's full cache; other settings or a
    repeated compressor are refused naming the file."""
    head = {"data": "nq.jsonl", "format": "nq", "model": "m", "n": 4, "offset": 300, "query_aware": False, "k": 5}
    a = {**head, "runs": [run("none", [1, 0, 1, 0]), run("kvzip", [1, 0, 1, 0])]}
    b = {**head, "runs": [run("none", [1, 0, 1, 0]), run("kvzip(plus=True)", [1, 1, 1, 0])]}
    paths = []
    for i, m in enumerate((a, b, {**b, "offset": 0}, a)):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(m))
    m = merge_matrices([str(paths[0]), str(paths[1])])
    assert [r["compressor"] for r in m["runs"]] == ["none", "kvzip", "kvzip(plus=True)"]
    assert main(["--matrix", str(paths[0]), str(paths[1]), "--best"]) == 0
    assert capsys.readouterr().out.strip() == "kvzip(plus=True)"
    with pytest.raises(ValueError, match="2.json: offset=0 differ"):
        merge_matrices([str(paths[0]), str(paths[2])])
    with pytest.raises(ValueError, match="3.json: kvzip at ratio 0.5 is in an earlier file"):
        merge_matrices([str(paths[0]), str(paths[3])])


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
