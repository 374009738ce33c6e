"""eval.context_suites.merge_crag: shards of one CRAG run joined into exactly its figures."""

import pytest

from eval.context_suites import crag_summary, merge_crag
from ragcore.errors import ConfigError


def pred(i: int, plain: float, crag: float) -> dict:
    return {
        "id": f"q{i}",
        "plain": {"tokens": 100, "accuracy": plain, "seconds": 1.0},
        "crag": {"tokens": 40, "accuracy": crag, "seconds": 2.0},
    }


def shard(preds: list[dict], offset: int) -> dict:
    return {"suite": "crag", "model": "m", "k": 10, "method": "crag", "offset": offset, **crag_summary(preds, "crag")}


def test_shards_merge_into_the_figures_of_one_run():
    preds = [pred(i, float(i % 2), float(i % 3 == 0)) for i in range(9)]
    whole = shard(preds, 0)
    m = merge_crag([shard(preds[:4], 0), shard(preds[4:], 4)])
    for key in ("n", "accuracy_diff", "accuracy_diff_ci95", "tokens_saved"):
        assert m[key] == pytest.approx(whole[key]), key
    assert m["tokens_saved"] == pytest.approx(0.6) and m["offset"] == 0
    with pytest.raises(ConfigError, match="twice"):
        merge_crag([shard(preds[:4], 0), shard(preds[:4], 0)])
    with pytest.raises(ConfigError, match="one method"):
        merge_crag([shard(preds[:4], 0), {**shard(preds[4:], 4), "method": "other"}])


def test_shards_with_and_without_answers_are_not_merged():
    """A --no-generate shard has no accuracy: merged with a generated one, the figures would be the first shard's."""
    answered = [pred(i, 1.0, 0.0) for i in range(3)]
    bare = [
        {"id": f"q{i}", "plain": {"tokens": 100, "seconds": 0.1}, "crag": {"tokens": 40, "seconds": 0.1}}
        for i in (3, 4)
    ]
    for order in ((shard(answered, 0), shard(bare, 3)), (shard(bare, 3), shard(answered, 0))):
        with pytest.raises(ConfigError, match="with and without answers"):
            merge_crag(list(order))
    m = merge_crag([shard(bare[:1], 3), shard(bare[1:], 4)])
    assert m["n"] == 2 and "accuracy_diff" not in m and "accuracy" not in m["plain"]
