import pytest

from ragcore.errors import ConfigError, EmptyCorpusError, EmptyQueryError
from ragcore.types import Chunk
from retrieval.hybrid import HybridRetriever, fuse


@pytest.mark.parametrize("mode", ["hybrid", "bm25", "dense"])
def test_modes_find_the_right_passage_and_keep_scores(retriever, mode):
    res = retriever.search("Which planet has a huge storm called the Great Red Spot?", 3, mode)
    assert res[0].chunk.source_id == "jupiter"
    assert [x.rank for x in res] == [1, 2, 3]
    assert "bm25" in res[0].scores
    if mode != "bm25":
        assert "dense" in res[0].scores
    if mode == "hybrid":
        fused = [x.scores["hybrid"] for x in res]
        assert fused == sorted(fused, reverse=True)


@pytest.mark.parametrize("fusion", ["weighted", "rrf"])
def test_fusions(chunks, fusion):
    r = HybridRetriever(fusion=fusion)
    r.add(chunks)
    assert r.search("rings of Saturn", 1)[0].chunk.source_id == "saturn"


def test_fuse_weights_are_respected():
    import numpy as np

    bm, dn = np.array([3.0, 1.0, 0.0]), np.array([0.1, 0.5, 0.9])
    assert fuse(bm, dn, "weighted", 1.0).argmax() == 2
    assert fuse(bm, dn, "weighted", 0.0).argmax() == 0
    assert fuse(bm, dn, "rrf", 0.5)[1] == pytest.approx(0.5 / 62 + 0.5 / 62)


def test_hnsw_factory(chunks):
    r = HybridRetriever(factory="HNSW32")
    r.add(chunks)
    assert r.search("tallest volcano", 1, "dense")[0].chunk.source_id == "mars"


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_queries(retriever, bad):
    with pytest.raises(EmptyQueryError, match="query must contain text"):
        retriever.search(bad)


def test_empty_corpus_and_bad_options(tmp_path):
    r = HybridRetriever()
    with pytest.raises(EmptyCorpusError):
        r.search("anything")
    with pytest.raises(EmptyCorpusError):
        r.save(tmp_path / "idx")
    assert r.add([Chunk("   ")]) == 0  # whitespace-only passages are not indexed
    with pytest.raises(ConfigError, match="'borda'"):
        HybridRetriever(fusion="borda")
    with pytest.raises(ConfigError, match="1.5"):
        HybridRetriever(dense_weight=1.5)
    with pytest.raises(ConfigError, match="'Bogus'"):
        r2 = HybridRetriever(factory="Bogus")
        r2.add([Chunk("text")])
    with pytest.raises(ConfigError, match="Chunk"):
        r.add(["a plain string"])


def test_bad_mode_and_k(retriever):
    with pytest.raises(ConfigError, match="'sparse'"):
        retriever.search("x", 3, "sparse")
    with pytest.raises(ConfigError, match="0"):
        retriever.search("x", 0)
