import pytest

from eval import metrics


def test_answer_metrics():
    assert metrics.exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1
    assert metrics.exact_match("Eiffel", ["eiffel tower"]) == 0
    assert metrics.token_f1("Eiffel", ["eiffel tower"]) == pytest.approx(2 / 3)
    assert metrics.accuracy("It was built in 1889.", ["1889"]) == 1
    assert metrics.accuracy("It was built in 18890.", ["1889"]) == 0  # whole tokens only
    assert metrics.accuracy("anything", [""]) == 0


def test_ranking_metrics():
    ranked = ["a", "b", "c", "d"]
    assert metrics.recall_at(ranked, {"c"}, 2) == 0 and metrics.recall_at(ranked, {"c"}, 3) == 1
    assert metrics.mrr(ranked, {"c"}) == pytest.approx(1 / 3)
    assert metrics.mrr(ranked, {"z"}) == 0
    assert metrics.ndcg_at(ranked, {"a"}) == 1
    assert metrics.ndcg_at(ranked, {"b"}) == pytest.approx(1 / 1.5849625)
