"""Issue 12, kinds 3 and 11: queries without BM25 terms; scores a user can read."""

import json

import numpy as np
import pytest

from ragcore.chunking import chunk_text
from ragcore.cli import main
from ragcore.errors import ConfigError, NoQueryTermsError
from retrieval.hybrid import HybridRetriever, fuse


@pytest.mark.parametrize("query", ["C++", "???", "the of and", "a b c", "!!! ... ---"])
def test_queries_without_bm25_terms_get_dense_results(retriever, query):
    for mode in ("hybrid", "dense"):
        res = retriever.search(query, 3, mode)
        assert len(res) == 3 and all(r.scores["bm25"] == 0.0 for r in res)
        assert all(-1.0 <= r.scores["dense"] <= 1.0 for r in res)
    hy = retriever.search(query, 3, "hybrid")
    assert [r.scores["hybrid"] for r in hy] == pytest.approx([0.9 * max(r.scores["dense"], 0) for r in hy])
    with pytest.raises(NoQueryTermsError, match="no terms BM25 can match"):
        retriever.search(query, 3, "bm25")


def test_cli_search_and_ask_never_crash_on_such_queries(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "cpp.txt").write_text("C++ templates are instantiated at compile time by the compiler.\n")
    (d / "py.txt").write_text("Python lists grow by over-allocating their storage.\n")
    idx = str(tmp_path / "idx")
    assert main(["index", str(d), "--index", idx]) == 0
    capsys.readouterr()
    for mode in ("hybrid", "dense"):
        assert main(["search", "C++", "--index", idx, "--mode", mode, "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res[0]["chunk"]["source_id"].endswith("cpp.txt") and res[0]["scores"]["bm25"] == 0.0
    assert main(["search", "???", "--index", idx, "--mode", "bm25"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ragcore: error: --mode: query '???' has no terms")
    args = ["ask", "C++", "--index", idx, "--model", "smollm2-135m", "--max-new-tokens", "4", "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["citations"]


def test_a_query_that_matches_nothing_is_not_shown_as_a_near_perfect_hit(retriever):
    """The example: min-max fusion showed the top hit of a query matching nothing as hybrid=0.900."""
    top = retriever.search("zebra quantum xylophone", 1)[0]
    assert top.scores["bm25"] == 0.0
    assert top.scores["hybrid"] == pytest.approx(0.9 * max(top.scores["dense"], 0)) and top.scores["hybrid"] < 0.3
    good = retriever.search("Which planet has the Great Red Spot storm?", 1)[0]
    assert good.scores["hybrid"] > top.scores["hybrid"] + 0.3


@pytest.mark.parametrize(
    "texts",
    [
        ["Olympus Mons on Mars is the tallest volcano in the Solar System."],  # the example: one chunk
        ["Olympus Mons on Mars is the tallest volcano in the Solar System.", "Olympus Mons is the tallest volcano."],
        ["Olympus Mons on Mars is the tallest volcano in the Solar System.", "Bananas are yellow."],
    ],
)
def test_a_perfect_match_scores_high_whatever_the_pool(texts):
    r = HybridRetriever()
    r.add([c for i, t in enumerate(texts) for c in chunk_text(t, f"s{i}")])
    top = r.search("Olympus Mons on Mars is the tallest volcano in the Solar System.", 1)[0]
    assert top.scores["dense"] > 0.95 and top.scores["hybrid"] > 0.9  # min-max over one value gave 0.000


def test_fused_scores_stay_in_range_and_rrf_is_labelled_as_ranks(capsys, tmp_path):
    bm, dn = np.array([0.0, 0.0, 0.0]), np.array([0.2, -0.1, 0.05])
    assert fuse(bm, dn).tolist() == pytest.approx([0.18, 0.0, 0.045])
    assert fuse(np.array([4.0, 2.0]), np.array([0.5, 0.5])).tolist() == pytest.approx([0.55, 0.5])
    from ragcore.cli import format_scores

    s = {"bm25": 3.1, "dense": 0.688, "hybrid": 0.7}
    assert format_scores(s) == "hybrid=0.700 (bm25=3.100, cosine=0.688)"
    assert format_scores(s, "rrf").startswith("rrf=0.700")
    assert format_scores({"bm25": 2.0}) == "bm25=2.000"


def test_min_score_is_a_floor_on_the_dense_cosine(retriever, tmp_path, capsys):
    all_ = retriever.search("tallest volcano on Mars", 5, "dense")
    floor = (all_[0].scores["dense"] + all_[1].scores["dense"]) / 2
    for mode in ("hybrid", "dense"):
        res = retriever.search("tallest volcano on Mars", 5, mode, min_score=floor)
        assert [r.chunk.source_id for r in res] == ["mars"]
    assert retriever.search("zebra quantum xylophone", 5, min_score=0.9) == []
    with pytest.raises(ConfigError, match="min_score"):
        retriever.search("volcano", 5, "bm25", min_score=0.5)
    with pytest.raises(ConfigError, match="1.5"):
        retriever.search("volcano", 5, min_score=1.5)
    retriever.save(tmp_path / "idx")
    capsys.readouterr()
    assert main(["search", "zebra quantum xylophone", "--index", str(tmp_path / "idx"), "--min-score", "0.9"]) == 0
    assert "no passage has a dense cosine of at least --min-score 0.9" in capsys.readouterr().err
    assert main(["search", "tallest volcano", "--index", str(tmp_path / "idx"), "-k", "1"]) == 0
    out = capsys.readouterr().out
    assert "hybrid=" in out and "bm25=" in out and "cosine=" in out
