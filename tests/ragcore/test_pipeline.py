"""Pipeline: retrieve, generate with the real SmolLM2, cite; optionally with a compressed KV cache."""

from __future__ import annotations

import pytest

from compress.kv import get_compressor
from ragcore.errors import ConfigError
from ragcore.generator import GenerationConfig
from ragcore.pipeline import Pipeline
from ragcore.types import Answer

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
    for layer in smol.model.model.layers:  # the compressor's hooks are gone after the answer
        assert not layer.self_attn._forward_hooks and not layer.self_attn._forward_pre_hooks


def test_bad_arguments_are_refused(retriever, smol):
    with pytest.raises(ConfigError, match="compressor must be a KV compressor .*got 'snapkv'"):
        Pipeline(retriever, smol, compressor="snapkv")
    with pytest.raises(ConfigError, match="k must be a positive integer, got 0"):
        Pipeline(retriever, smol, k=0)
