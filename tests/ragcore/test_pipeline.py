"""Pipeline: retrieve, generate with the real SmolLM2, cite; optionally with a compressed KV cache."""

from __future__ import annotations

import pytest

from compress.kv import get_compressor
from ragcore.errors import ConfigError, PromptTooLongError
from ragcore.generator import GenerationConfig
from ragcore.pipeline import Pipeline
from ragcore.types import Answer
from tests.helpers import hooks_left

CFG = GenerationConfig(max_new_tokens=8)
QUESTION = "Which planet has the tallest volcano?"


def test_ask_answers_and_cites_retrieved_passages(retriever, smol):
    ans = Pipeline(retriever, smol, k=2, config=CFG).ask(QUESTION)
    assert ans.text and ans.model == "smollm2-135m" and len(ans.passages) == 2
    assert ans.passages[0].chunk.source_id == "mars"
    assert {c.chunk_id for c in ans.citations} <= {p.chunk.id for p in ans.passages} and ans.citations
    assert ans.kv["compressor"] == "none" and ans.kv["kv_bytes"] == ans.kv["kv_bytes_full"] > 0
    assert Answer.from_dict(ans.to_dict()) == ans


@pytest.mark.parametrize("query_aware", [False, True])
def test_ask_with_a_kv_compressor_holds_fewer_bytes(retriever, smol, query_aware):
    comp = get_compressor("snapkv", ratio=0.5)
    ans = Pipeline(retriever, smol, k=2, config=CFG, compressor=comp, query_aware=query_aware).ask(QUESTION)
    kv = ans.kv
    assert kv["compressor"] == "snapkv" and kv["query_aware"] is query_aware and not kv["masks_only"]
    assert 0 < kv["kv_bytes"] < 0.75 * kv["kv_bytes_full"] and ans.text
    assert hooks_left(smol.model) == 0  # the compressor's hooks are gone after the answer


def test_bad_arguments_are_refused(retriever, smol):
    with pytest.raises(ConfigError, match="compressor must be a KV compressor or its spec string.*got 42"):
        Pipeline(retriever, smol, compressor=42)
    with pytest.raises(ConfigError, match="unknown kv_compressor 'snapkx'"):
        Pipeline(retriever, smol, compressor="snapkx(ratio=0.5)")
    with pytest.raises(ConfigError, match="k must be a positive integer, got 0"):
        Pipeline(retriever, smol, k=0)
    with pytest.raises(ConfigError, match="retriever must have retrieve"):
        Pipeline(object(), smol)


def test_a_compressor_by_its_spec_string(retriever, smol):
    ans = Pipeline(retriever, smol, k=2, config=CFG, compressor="snapkv(ratio=0.5)").ask(QUESTION)
    assert ans.kv["compressor"] == "snapkv" and ans.kv["kv_bytes"] < 0.75 * ans.kv["kv_bytes_full"]


def test_passages_that_do_not_fit_the_window_are_dropped(retriever, smol):
    """Field report: -k 70 with SmolLM2 built a prompt longer than the model's window and answered gibberish. The
    passages that do not fit (with room for the answer) are left out, from the lowest ranked, and reported."""
    full = Pipeline(retriever, smol, k=5, config=CFG).ask(QUESTION)
    n_full = len(smol.prompt(QUESTION, full.passages))
    smol.model.config.max_position_embeddings = n_full - 20 + CFG.max_new_tokens  # one passage too many
    ans = Pipeline(retriever, smol, k=5, config=CFG).ask(QUESTION)
    assert 1 <= len(ans.passages) < 5 and ans.dropped == [p.chunk.id for p in full.passages[len(ans.passages) :]]
    assert [p.chunk.id for p in ans.passages] == [p.chunk.id for p in full.passages[: len(ans.passages)]]
    assert len(smol.prompt(QUESTION, ans.passages)) + CFG.max_new_tokens <= smol.model.config.max_position_embeddings
    assert Answer.from_dict(ans.to_dict()).dropped == ans.dropped


@pytest.mark.parametrize("order", ["reversed", "lost_in_the_middle", "attention_sort(rounds=1)"])
def test_a_window_too_small_drops_the_least_relevant_wherever_the_reranker_put_them(retriever, smol, order):
    """Fitting the window after a reranker: the passages left out are the least relevant (by retrieval rank), not
    the last slots (a best-last order would lose its best passage), and the reranker reads only what fits."""
    full = Pipeline(retriever, smol, k=5, config=CFG).ask(QUESTION)
    n_full = len(smol.prompt(QUESTION, full.passages))
    smol.model.config.max_position_embeddings = n_full - 20 + CFG.max_new_tokens  # one passage too many
    seen = []
    p = Pipeline(retriever, smol, k=5, config=CFG, reranker=order)
    rerank = p.reranker.rerank
    object.__setattr__(p.reranker, "rerank", lambda q, ps, lm: seen.append(len(ps)) or rerank(q, ps, lm))
    ans = p.ask(QUESTION)
    n = len(ans.passages)
    assert 1 <= n < 5 and seen == [n]
    assert sorted(x.rank for x in ans.passages) == list(range(1, n + 1))  # the n most relevant
    assert ans.dropped == [x.chunk.id for x in full.passages[n:]]
    assert ans.passages[0 if order == "lost_in_the_middle" else -1].rank == 1 or order.startswith("attention")


class WorstFirst:
    """A retriever that returns its ranked passages worst first (ranks kept: e.g. in document order)."""

    name = "worst_first"

    def __init__(self, inner):
        self.inner = inner

    def retrieve(self, question, k):
        return list(reversed(self.inner.retrieve(question, k)))


@pytest.mark.parametrize("order", [None, "reversed"])
def test_the_passages_left_out_are_the_least_relevant_in_any_retrieved_order(retriever, smol, order):
    """The fit before the reranker leaves out by retrieval rank too, not the last retrieved: a retriever that lists
    its passages worst first used to lose its best passage when a reranker was set (and the worst without)."""
    full = Pipeline(retriever, smol, k=5, config=CFG).passages(QUESTION, [])
    n_full = len(smol.prompt(QUESTION, full))
    smol.model.config.max_position_embeddings = n_full - 20 + CFG.max_new_tokens  # one passage too many
    ans = Pipeline(WorstFirst(retriever), smol, k=5, config=CFG, reranker=order).ask(QUESTION)
    assert sorted(x.rank for x in ans.passages) == [1, 2, 3, 4]
    assert ans.dropped == [full[4].chunk.id]


def test_dropped_lists_the_most_relevant_first_and_compress_context_keeps_max_tokens(retriever, smol):
    """Passages left out before the reranker and after it are listed together by retrieval rank; the context that
    compress_context prefills fits ``max_tokens`` as ``ask``'s prompt does."""
    full = Pipeline(retriever, smol, k=5, config=CFG).passages(QUESTION, [])
    two = len(smol.prompt(QUESTION, full[:2])) + CFG.max_new_tokens
    p = Pipeline(WorstFirst(retriever), smol, k=5, config=CFG, reranker="reversed")
    p.max_tokens = two
    ans = p.ask(QUESTION)
    assert sorted(x.rank for x in ans.passages) == [1, 2]
    assert ans.dropped == [x.chunk.id for x in full[2:]]
    ctx = Pipeline(retriever, smol, k=5, config=CFG)
    ctx.max_tokens = two
    assert [c.id for c in ctx.compress_context(QUESTION, "none").passages] == [x.chunk.id for x in full[:2]]


def test_with_a_context_compressor_the_reranker_reads_what_fits_and_the_compressor_gets_all(retriever, smol):
    """A reranker followed by a context compressor: the reranker reads only the passages that fit the window (its
    attention would be read past it otherwise); the compressor still gets every retrieved passage, the unread ones
    after the reranker's order, most relevant first."""
    full = Pipeline(retriever, smol, k=5, config=CFG).ask(QUESTION)
    n_full = len(smol.prompt(QUESTION, full.passages))
    smol.model.config.max_position_embeddings = n_full - 20 + CFG.max_new_tokens  # one passage too many
    p = Pipeline(retriever, smol, k=5, config=CFG, reranker="reversed", context_compressor="crag(k=1)")
    read, got = [], []
    rerank, compress = p.reranker.rerank, p.context_compressor.compress
    object.__setattr__(p.reranker, "rerank", lambda q, ps, lm: read.append(len(ps)) or rerank(q, ps, lm))
    object.__setattr__(p.context_compressor, "compress", lambda q, ps, lm: got.append(ps) or compress(q, ps, lm))
    ans = p.ask(QUESTION)
    assert read == [4] and [x.rank for x in got[0]] == [4, 3, 2, 1, 5]
    rep = next(r for r in ans.stages if r.kind == "reranker")
    assert rep.items_in == 4 and rep.details["unread"] == [full.passages[4].chunk.id]


def test_fit_prompt_keeps_the_most_important_in_their_order(smol):
    from tests.helpers import PASSAGES

    prompt = smol.prompt(QUESTION, PASSAGES)
    limit = len(smol.prompt(QUESTION, PASSAGES[:-1])) + 8
    smol.model.config.max_position_embeddings = limit
    order = list(reversed(range(len(PASSAGES))))  # the last passage is the most important
    p, kept = smol.fit_prompt(QUESTION, PASSAGES, 8, priority=order)
    assert kept[-1] == PASSAGES[-1] and len(kept) < len(PASSAGES) and len(p) + 8 <= limit < len(prompt) + 8
    assert kept == [x for x in PASSAGES if x in kept]  # the given order
    with pytest.raises(ConfigError, match="priority must order the"):
        smol.fit_prompt(QUESTION, PASSAGES, 8, priority=[0, 0])
    smol.model.config.max_position_embeddings = 40  # the passage measured is the most important, not the first
    with pytest.raises(PromptTooLongError, match="the question and its most important passage take"):
        smol.fit_prompt(QUESTION, PASSAGES, 8, priority=order)


def test_a_question_that_cannot_fit_is_a_clear_error(retriever, smol):
    smol.model.config.max_position_embeddings = 40
    with pytest.raises(PromptTooLongError, match="take .* tokens; 'smollm2-135m' reads 40 tokens, 8 of them kept"):
        Pipeline(retriever, smol, k=3, config=CFG).ask(QUESTION)


def test_every_stage_reports_and_a_failing_stage_is_named(retriever, smol):
    from dataclasses import dataclass
    from typing import ClassVar

    from ragcore.errors import StageError

    @dataclass
    class Reverse:
        name: ClassVar[str] = "reverse"

        def rerank(self, question, passages, lm):
            return list(reversed(passages))

    @dataclass
    class Broken:
        name: ClassVar[str] = "broken"

        def rerank(self, question, passages, lm):
            raise ZeroDivisionError("boom")

    plain = Pipeline(retriever, smol, k=3, config=CFG).ask(QUESTION)
    ans = Pipeline(retriever, smol, k=3, config=CFG, reranker=Reverse(), compressor="snapkv(ratio=0.5)").ask(QUESTION)
    assert [p.chunk.id for p in ans.passages] == [p.chunk.id for p in reversed(plain.passages)]
    kinds = [r.kind for r in ans.stages]
    assert kinds == ["retriever", "reranker", "generator", "kv_compressor"]
    assert all(r.seconds >= 0 for r in ans.stages) and ans.stages[1].details["order"] == [
        p.chunk.id for p in ans.passages
    ]
    assert ans.stages[2].items_in > 0 and ans.stages[3].details["kv_bytes"] < ans.stages[3].details["kv_bytes_full"]
    assert Answer.from_dict(ans.to_dict()) == ans
    with pytest.raises(StageError, match="reranker 'broken' failed: ZeroDivisionError: boom"):
        Pipeline(retriever, smol, k=3, config=CFG, reranker=Broken()).ask(QUESTION)
    with pytest.raises(ConfigError, match="reranker must be a reranker stage or its spec string"):
        Pipeline(retriever, smol, reranker=42)
