"""The baseline orders put each relevance rank where they say, and the random one is seeded."""

from __future__ import annotations

from rerank.orders import LostInTheMiddleOrder, RandomOrder, RetrievalOrder, ReversedOrder
from tests.rerank.helpers import passages


def ranks(out):
    return [int(p.scores[next(reversed(p.scores))]) for p in out]


def test_orders_place_ranks():
    ps = passages(6)
    assert ranks(RetrievalOrder().rerank("q", ps)) == [1, 2, 3, 4, 5, 6]
    assert ranks(ReversedOrder().rerank("q", ps)) == [6, 5, 4, 3, 2, 1]
    assert ranks(LostInTheMiddleOrder().rerank("q", ps)) == [1, 3, 5, 6, 4, 2]


def test_random_is_seeded_per_question():
    ps = passages(10)
    a = ranks(RandomOrder(seed=1).rerank("q", ps))
    assert a == ranks(RandomOrder(seed=1).rerank("q", ps))
    assert a != ranks(RandomOrder(seed=2).rerank("q", ps))
    assert sorted(a) == list(range(1, 11))
