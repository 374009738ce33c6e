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
