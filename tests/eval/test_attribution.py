"""The PoisonedRAG suite on the real SmolLM2: shuffles per target, figures from per-context records, and shards that
merge into exactly the figures of one run."""

from __future__ import annotations

import math

import pytest

from eval.attribution import eval_poisoned, merge, summarize_poisoned
from eval.stats import cluster_mean_ci, mean_ci
from ragcore.errors import ConfigError

FAST = "attntrace(subsamples=1, keep=1.0)"
RUN = {"model": "smollm2-135m", "device": "cpu", "max_new_tokens": 6}


@pytest.fixture(scope="module")
def whole():
    return eval_poisoned(None, FAST, limit=2, shuffles=2, second_round=(1, 2), **RUN)


def test_every_target_is_asked_in_each_shuffle_and_the_figures_come_from_the_records(whole):
    recs = whole["records"]
    assert whole["n"] == 4 and whole["targets"] == 2 and len(recs) == 4
    assert sorted((r["target"], r["shuffle"]) for r in recs) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    e = whole[FAST]
    assert whole["asr"]["mean"] == pytest.approx(sum(r["attacked"] for r in recs) / 4)
    forensic = sum(r["attacked"] * r["methods"][FAST]["attacked_after_removal"] for r in recs) / 4
    assert e["asr_defended"] == pytest.approx(forensic) and e["asr_defended"] <= whole["asr"]["mean"]
    assert e["n_attacked"] == sum(1 for r in recs if r["attacked"])
    for r in recs:
        m = r["methods"][FAST]
        assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1 and m["seconds"] > 0
    assert e["seconds_per_trace"] > 0 and math.isfinite(e["ratio_to_generation"])


def test_shards_merge_into_the_figures_of_one_run(whole):
    a = eval_poisoned(None, FAST, limit=1, shuffles=2, second_round=(1, 2), **RUN)
    b = eval_poisoned(None, FAST, offset=1, limit=1, shuffles=2, second_round=(1, 2), **RUN)
    m = merge([a, b])
    assert m["n"] == whole["n"] and m["targets"] == 2
    for key in ("n_attacked", "asr_defended", "asr_defended_ci95", "trace_precision", "asr_defended_all"):
        assert m[FAST][key] == pytest.approx(whole[FAST][key], nan_ok=True), key
    assert m[FAST].get("second_round") == pytest.approx(whole[FAST].get("second_round"), nan_ok=True)
    assert m["asr"] == pytest.approx(whole["asr"])
    with pytest.raises(ConfigError, match="twice"):
        merge([a, a])
    with pytest.raises(ConfigError, match="one second_round"):
        merge([a, {**b, "second_round": [1]}])


def test_a_second_round_is_traced_and_answered_for_each_k2(whole):
    for r in whole["records"]:
        m = r["methods"][FAST]
        assert m["changed"] in (0.0, 1.0) and m["correct_after_removal"] in (0.0, 1.0)
        if not r["attacked"]:  # forensics: only an attacked answer is traced again
            assert "second_round" not in m
            continue
        assert set(m["second_round"]) == {"1", "2"}
        assert all(v["attacked"] in (0.0, 1.0) and v["correct"] in (0.0, 1.0) for v in m["second_round"].values())
    assert whole["second_round"] == [1, 2]


def _record(target, attacked, after, changed, second, correct=0.0):
    return {
        "target": target,
        "shuffle": 0,
        "attacked": attacked,
        "generation_seconds": 1.0,
        "methods": {
            "t": {
                "seconds": 1.0,
                "precision": 1.0,
                "recall": 1.0,
                "attacked_after_removal": after,
                "correct_after_removal": correct,
                "changed": changed,
                "second_round": {"1": {"attacked": second, "correct": 1.0 - second}},
            }
        },
    }


def test_second_round_figures_follow_the_records_and_the_unchanged_condition():
    recs = [
        _record(0, 1.0, 1.0, 0.0, 0.0),  # first round missed, answer unchanged: the second round clears it
        _record(1, 1.0, 1.0, 1.0, 0.0),  # missed, answer changed: only the unconditional second round clears it
        _record(2, 1.0, 0.0, 1.0, 1.0, correct=1.0),  # cleared by the first round; a second round would re-attack
        _record(3, 0.0, 1.0, 1.0, 1.0),  # not attacked: the forensic defence leaves it alone
        _record(4, 1.0, 1.0, 1.0, 0.0),  # as target 1
    ]
    e = summarize_poisoned(recs, {"t": "t"})["t"]
    assert e["asr_defended"] == pytest.approx(3 / 5) and e["recovered"] == pytest.approx(1 / 4)
    r = e["second_round"]["1"]
    assert r["asr_defended"] == pytest.approx(1 / 5) and r["recovered"] == pytest.approx(3 / 4)
    assert r["asr_defended_if_unchanged"] == pytest.approx(2 / 5) and r["n_if_unchanged"] == 1
    assert r["recovered_if_unchanged"] == pytest.approx(2 / 4)


def test_second_round_takes_positive_integers():
    with pytest.raises(ConfigError, match="second_round takes integers from 1 to 5"):
        eval_poisoned(None, FAST, limit=1, second_round=(0,), **RUN)


def test_shuffles_must_be_positive():
    with pytest.raises(ConfigError, match="shuffles must be a positive integer, got 0"):
        eval_poisoned(None, FAST, limit=1, shuffles=0, **RUN)


def test_clustered_interval_counts_a_repeated_item_once():
    xs = [1.0, 0.0, 1.0, 1.0, 0.0]
    assert cluster_mean_ci(xs, range(5)) == pytest.approx(mean_ci(xs))
    assert cluster_mean_ci(xs * 2, list(range(5)) * 2) == pytest.approx(mean_ci(xs))
    with pytest.raises(ValueError, match="one cluster per value"):
        cluster_mean_ci(xs, [0])


@pytest.mark.parametrize(("k2", "said"), [((6,), "from 1 to 5"), ((1, 1), "each K2 once")])
def test_second_round_k2_fits_the_texts_left_once_each(k2, said):
    with pytest.raises(ConfigError, match=said):
        eval_poisoned(None, FAST, limit=1, second_round=k2, **RUN)


def test_records_of_one_run_with_different_second_rounds_are_refused():
    a = _record(0, 1.0, 1.0, 0.0, 0.0)
    b = _record(1, 1.0, 1.0, 0.0, 0.0)
    b["methods"]["t"]["second_round"]["2"] = {"attacked": 0.0, "correct": 0.0}
    with pytest.raises(ConfigError, match="different second rounds"):
        summarize_poisoned([a, b], {"t": "t"})


def test_an_empty_second_round_flag_is_refused(capsys):
    from ragcore.cli import main

    assert main(["eval", "poisoned", "--second-round", "", "--limit", "1", "--model", "smollm2-135m"]) == 1
    assert "--second-round: second_round takes positive integers" in capsys.readouterr().err
