"""eval.stats: means with intervals and paired differences, on hand-made values."""

from __future__ import annotations

import math

import pytest

from eval.stats import matched_diffs, mean_ci, paired_difference, paired_diffs


def test_mean_ci():
    m, ci = mean_ci([1, 0, 1, 0])
    assert m == 0.5 and ci == pytest.approx(1.96 * math.sqrt((4 * 0.25 / 3) / 4))
    assert mean_ci([]) == (0.0, 0.0) and mean_ci([0.3]) == (0.3, 0.0)
    assert mean_ci([1, 0, 1, 0], z=1.0)[1] == pytest.approx(ci / 1.96)


def test_paired_diffs_need_the_same_items():
    assert paired_diffs([1, 0, 1], [1, 1, 0]) == [0, -1, 1]
    with pytest.raises(ValueError, match="3 against 2"):
        paired_diffs([1, 0, 1], [1, 1])


def test_matched_diffs_pair_questions_by_id():
    """Questions are matched by id, not position; a question only one run answered is left out."""
    base = {"predictions": [{"id": "a", "accuracy": 1.0}, {"id": "b", "accuracy": 0.0}, {"id": "c", "accuracy": 1.0}]}
    run = {"predictions": [{"id": "c", "accuracy": 0.0}, {"id": "b", "accuracy": 1.0}, {"id": "z", "accuracy": 1.0}]}
    assert matched_diffs(run, base) == [-1.0, 1.0]
    change, ci = paired_difference(run, base)
    assert change == 0.0 and ci == pytest.approx(1.96 * math.sqrt(2 / 2))


def test_paired_interval_is_narrower_than_the_runs_own():
    """Two runs that agree on most questions: the paired interval is far narrower than either run's interval."""
    right = [1.0] * 30 + [0.0] * 30
    base = {"predictions": [{"id": i, "accuracy": x} for i, x in enumerate(right)]}
    run = {"predictions": [{"id": i, "accuracy": 0.0 if i == 0 else x} for i, x in enumerate(right)]}
    change, ci = paired_difference(run, base)
    assert change == pytest.approx(-1 / 60)
    assert ci < mean_ci(right)[1] / 3


def test_pool_equals_mean_ci_of_the_union():
    import random

    from eval.stats import mean_ci, pool

    rng = random.Random(3)
    xs = [rng.random() for _ in range(57)] + [float(rng.random() < 0.3) for _ in range(40)]
    cuts = [0, 10, 11, 50, 97]
    parts = [(*mean_ci(xs[a:b]), b - a) for a, b in zip(cuts, cuts[1:])]
    m, h, n = pool(parts)
    m0, h0 = mean_ci(xs)
    assert n == len(xs) and abs(m - m0) < 1e-12 and abs(h - h0) < 1e-12
    assert pool([]) == (0.0, 0.0, 0) and pool([(0.5, 0.0, 1), (0.0, 0.0, 0)]) == (0.5, 0.0, 1)


def test_every_suite_window_is_refused_by_name_when_empty_or_wrong():
    import pytest

    from eval.datasets import window
    from ragcore.errors import ConfigError

    assert window(list(range(10)), 3, 4) == [3, 4, 5, 6] and window(list(range(10)), 8, None) == [8, 9]
    for offset, limit, param in (
        (10, 1, "offset"),
        (-1, 1, "offset"),
        (0, 0, "limit"),
        (0, -2, "limit"),
        (0, True, "limit"),
    ):
        with pytest.raises(ConfigError) as e:
            window(list(range(10)), offset, limit)
        assert e.value.param == param


def test_merge_refuses_the_same_shard_twice_and_mixed_models():
    import json
    from pathlib import Path

    import pytest

    from eval.attribution import merge
    from ragcore.errors import ConfigError

    shard = json.loads(Path("docs/data/gpu/2026-11-30/attribution/poisoned-0.json").read_text())
    with pytest.raises(ConfigError, match="same shard twice"):
        merge([shard, shard])
    with pytest.raises(ConfigError, match="one model"):
        merge([shard, {**shard, "model": "other", "data": "x"}])
    two = merge([shard, {**shard, "data": "elsewhere"}])
    assert two["n"] == 2 * shard["n"] and two["data"] == [shard["data"], "elsewhere"]
