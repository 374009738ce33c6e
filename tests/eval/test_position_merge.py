"""eval.position.merge: shards and orders of a position sweep joined into the figures of one run."""

import pytest

from eval.position import merge
from ragcore.errors import ConfigError


def run(order: str, ids: list[str], acc: dict[tuple[str, int], float]) -> dict:
    preds = [
        {"order": order, "id": i, "rank": r, "slot": r, "accuracy": acc[(i, r)], "text": ""}
        for i in ids
        for r in (0, 9)
    ]
    return {
        "model": "m",
        "positions": [0, 9],
        "offset": 200,
        "n": len(ids),
        "orders": {order: {"seconds_per_query": 1.0}},
        "predictions": preds,
    }


def test_shards_and_orders_join_into_one_sweep():
    base = {("a", 0): 1.0, ("a", 9): 0.0, ("b", 0): 1.0, ("b", 9): 1.0}
    better = {k: 1.0 for k in base}
    m = merge([run("retrieval", ["a"], base), run("retrieval", ["b"], base), run("x", ["a", "b"], better)])
    assert m["n"] == 2 and m["orders"]["retrieval"]["accuracy_avg"] == pytest.approx(0.75)
    assert m["orders"]["retrieval"]["accuracy"] == {"0": 1.0, "9": 0.5}
    assert m["orders"]["x"]["diff_vs_retrieval"] == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="twice"):
        merge([run("retrieval", ["a"], base), run("retrieval", ["a"], base)])
    with pytest.raises(ConfigError, match="one model"):
        merge([run("retrieval", ["a"], base), {**run("x", ["b"], base), "model": "other"}])
