"""The reranker conformance suite: every registered reranker passes it, and none is named here.

A reranker returns a permutation of its input (same chunk ids, each once), writes ``scores[name]``, leaves its
input alone, handles zero and one passage, and its label rebuilds it. Run on a tiny random-init model with the
SmolLM2 tokenizer (AttnRank reads a profile calibrated on that model in a temporary cache directory).
"""

from __future__ import annotations

import pytest

from rerank import RERANKERS
from rerank.attnrank import calibrate, profile_path
from tests.helpers import tiny_generator, tiny_model
from tests.rerank.helpers import passages

NAMES = RERANKERS.names()


@pytest.fixture(scope="module")
def lm(_smol_session, tmp_path_factory):
    """A tiny model with SmolLM2's tokenizer, and its attention profile in a temporary cache directory."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RAGCORE_CACHE", str(tmp_path_factory.mktemp("cache")))
    g = tiny_generator(tiny_model(vocab=len(_smol_session.tokenizer)), _smol_session.tokenizer)
    g.model_name = "tiny"
    calibrate(g, [("Which passage?", passages(4, seed=s)) for s in range(3)]).save(profile_path(g))
    yield g
    mp.undo()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [0, 1, 2, 5, 10])
def test_a_permutation_with_scores(lm, name, n):
    ps = passages(n)
    before = [p.to_dict() for p in ps]
    out = RERANKERS.build(name).rerank("Which passage?", ps, lm)
    assert sorted(p.chunk.id for p in out) == sorted(p.chunk.id for p in ps)
    assert len({p.chunk.id for p in out}) == n
    assert all(name in p.scores for p in out) or n < 2
    assert [p.to_dict() for p in ps] == before  # the input is left alone


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_label_rebuilds(lm, name):
    stage = RERANKERS.build(name)
    assert RERANKERS.build(stage.label) == stage
    ps = passages(6)
    ids = [p.chunk.id for p in stage.rerank("Which passage?", ps, lm)]
    assert ids == [p.chunk.id for p in stage.rerank("Which passage?", ps, lm)]
