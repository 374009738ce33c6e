"""The compressor base: the compressed cache is what a masked full forward sees; decoding is never compressed."""

from __future__ import annotations

import pytest
import torch

from compress.kv import KVCompressor, get_compressor
from ragcore import cache as kvcache
from tests.compress.kv.helpers import prefill
from tests.helpers import Q, T, hooks_left, random_ids


def test_failing_score_still_removes_hooks(tiny_llama):
    class Broken(KVCompressor):
        def score(self, x):
            raise ValueError("bad score")

    with pytest.raises(ValueError, match="bad score"):
        prefill(tiny_llama, Broken(ratio=0.5), random_ids(T))
    assert hooks_left(tiny_llama) == 0


def test_decode_does_not_compress(tiny_llama):
    comp = get_compressor("knorm", ratio=0.5)
    cache = kvcache.new_cache(tiny_llama.config)
    with torch.inference_mode(), comp.apply(tiny_llama, cache):
        kvcache.call(tiny_llama, cache, input_ids=random_ids(T), use_cache=True)
        for i in range(3):
            kvcache.feed(tiny_llama, torch.tensor([[5]]), cache, T + i)
    assert kvcache.seq_len(cache) == 32 + 3


def test_a_call_bound_to_a_cache_leaves_other_caches_alone(tiny_llama):
    """Two caches on one model: the call compresses the one it was given, the other prefill keeps everything."""
    comp = get_compressor("snapkv", ratio=0.5)
    mine, other = kvcache.new_cache(tiny_llama.config), kvcache.new_cache(tiny_llama.config)
    with torch.inference_mode(), comp.apply(tiny_llama, mine) as call:
        kvcache.call(tiny_llama, other, input_ids=random_ids(T, seed=3), use_cache=True)
        kvcache.call(tiny_llama, mine, input_ids=random_ids(T), use_cache=True)
    assert kvcache.seq_len(other) == T and kvcache.seq_len(mine) == T // 2
    assert call.report.tokens_before == {0: T, 1: T}


def test_pruned_cache_matches_masked_full_forward(tiny):
    """StreamingLLM-pruned context + question at absolute positions == one full forward whose question rows
    cannot see the evicted context tokens (positions and causal masking of the question are right)."""
    ids = random_ids(T + Q)
    comp = get_compressor("streaming_llm", budget=20, n_sink=4)
    cache = kvcache.new_cache(tiny.config)
    with torch.inference_mode(), comp.apply(tiny, cache):
        kvcache.call(tiny, cache, input_ids=ids[:, :T], use_cache=True)
        got = kvcache.feed(tiny, ids[:, T:], cache, T)
    kept = torch.zeros(T, dtype=torch.bool)
    kept[:4] = kept[T - 16 : T] = True
    mask = torch.ones(T + Q, T + Q, dtype=torch.bool).tril()
    mask[T:, :T] &= kept
    with torch.inference_mode():
        ref = tiny(input_ids=ids, attention_mask=mask[None, None]).logits[:, -1]
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_uneven_head_budgets_match_per_head_masked_forward(tiny_llama):
    """Razor with kv head 1 a retrieval head in both layers == a full forward in which the question rows of
    kv head 0 (query heads 0, 1) see only the sinks and recent window of the context."""
    ids = random_ids(T + Q)
    comp = get_compressor("razor", budget=20, retrieval_heads={0: [1], 1: [1]})
    cache = kvcache.new_cache(tiny_llama.config)
    with torch.inference_mode(), comp.apply(tiny_llama, cache) as call:
        kvcache.call(tiny_llama, cache, input_ids=ids[:, :T], use_cache=True)
        got = kvcache.feed(tiny_llama, ids[:, T:], cache, T)
    rep = call.report
    assert rep.masks_only and rep.tokens_kept == {0: [20, T], 1: [20, T]} and rep.cache_len == {0: T, 1: T}
    kept = torch.zeros(T, dtype=torch.bool)
    kept[:4] = kept[T - 16 : T] = True
    mask = torch.ones(1, 4, T + Q, T + Q, dtype=torch.bool).tril()
    mask[:, :2, T:, :T] &= kept
    with torch.inference_mode():
        ref = tiny_llama(input_ids=ids, attention_mask=mask).logits[:, -1]
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_head_masks_match_uniform_pruning(tiny_llama):
    """The masked path (razor with no retrieval heads: per-head masks, all visible) == plain pruning."""
    ids = random_ids(T + Q)
    out = []
    for comp in (get_compressor("razor", ratio=0.5, retrieval_heads={}), get_compressor("streaming_llm", ratio=0.5)):
        cache = kvcache.new_cache(tiny_llama.config)
        with torch.inference_mode(), comp.apply(tiny_llama, cache):
            kvcache.call(tiny_llama, cache, input_ids=ids[:, :T], use_cache=True)
            out.append(kvcache.feed(tiny_llama, ids[:, T:], cache, T))
            out.append(kvcache.feed(tiny_llama, torch.tensor([[7]]), cache, T + Q))
    torch.testing.assert_close(out[0], out[2], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[1], out[3], rtol=1e-4, atol=1e-4)


def test_uneven_masks_same_under_eager_and_sdpa(tiny_llama):
    ids = random_ids(T + Q)
    res = []
    for impl in ("sdpa", "eager"):
        tiny_llama.config._attn_implementation = impl
        comp = get_compressor("razor", ratio=0.5, retrieval_heads={0: [1], 1: [0]})
        cache = kvcache.new_cache(tiny_llama.config)
        try:
            with torch.inference_mode(), comp.apply(tiny_llama, cache) as call:
                kvcache.call(tiny_llama, cache, input_ids=ids[:, :T], use_cache=True)
                res.append(kvcache.feed(tiny_llama, ids[:, T:], cache, T))
                res.append(kvcache.feed(tiny_llama, torch.tensor([[9]]), cache, T + Q))  # decoding: one query row
        finally:
            tiny_llama.config._attn_implementation = "sdpa"
        assert call.report.masks_only and call.report.tokens_kept == {0: [32, 64], 1: [64, 32]}
    torch.testing.assert_close(res[0], res[2], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(res[1], res[3], rtol=1e-4, atol=1e-4)
