"""The cache adapter: reading, pruning and sizing transformers' KV cache, hooks and per-head masks."""

from __future__ import annotations

import pytest
import torch

from ragcore import cache as kvcache
from ragcore.errors import ConfigError
from tests.helpers import random_ids, tiny_model


@pytest.fixture(scope="module")
def tiny_llama():
    return tiny_model("llama")


def test_prune_and_bytes(tiny_llama):
    cache = kvcache.new_cache(tiny_llama.config)
    with torch.inference_mode():
        kvcache.call(tiny_llama, cache, input_ids=random_ids(20), use_cache=True)
    assert kvcache.n_layers(cache) == 2 and kvcache.seq_len(cache, 1) == 20
    k, v = kvcache.get_kv(cache, 0)
    full = kvcache.kv_bytes(cache)
    assert full == 2 * 2 * k.numel() * k.element_size() == kvcache.bytes_per_token(cache) * 20
    idx = torch.tensor([[[0, 3, 7], [1, 2, 19]]])
    kvcache.prune(cache, 0, idx)
    k2, v2 = kvcache.get_kv(cache, 0)
    assert (
        k2.shape == (1, 2, 3, k.shape[-1])
        and torch.equal(k2[0, 1, 2], k[0, 1, 19])
        and torch.equal(v2[0, 0, 1], v[0, 0, 3])
    )
    assert kvcache.kv_bytes(cache) == full // 2 + full // 2 * 3 // 20
    with pytest.raises(ConfigError, match="indices"):
        kvcache.prune(cache, 1, torch.tensor([[[0, 25], [0, 1]]]))
    with pytest.raises(ConfigError, match="layer 5"):
        kvcache.get_kv(cache, 5)


def test_legacy_lists():
    class Legacy:  # transformers 4.x DynamicCache layout
        key_cache = [torch.zeros(1, 2, 10, 4)]
        value_cache = [torch.ones(1, 2, 10, 4)]

    c = Legacy()
    assert kvcache.seq_len(c) == 10 and kvcache.kv_bytes(c) == 2 * 80 * 4
    kvcache.prune(c, 0, torch.tensor([[[1, 2], [3, 4]]]))
    assert c.key_cache[0].shape == (1, 2, 2, 4) and kvcache.kv_bytes(c) == 2 * 16 * 4


def test_hooks_are_removed_even_on_errors(tiny_llama):
    seen = []
    with (
        pytest.raises(RuntimeError, match="boom"),
        kvcache.attention_hooks(tiny_llama, pre=lambda m, a, k: seen.append(m.layer_idx), post=lambda m, a, k, o: None),
    ):
        with torch.inference_mode():
            tiny_llama(random_ids(5))
        raise RuntimeError("boom")
    assert seen == [0, 1]
    assert all(not a._forward_hooks and not a._forward_pre_hooks for a in kvcache.attention_layers(tiny_llama))


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_head_mask_hook_hides_slots_per_head(tiny_llama, impl):
    """The per-head mask hook == a full forward whose rows of key/value head 0 (query heads 0, 1) cannot see
    context positions 3..9, under either attention implementation."""
    ids = random_ids(30)
    hidden = torch.ones(1, 2, 24, dtype=torch.bool)
    hidden[0, 0, 3:10] = False
    tiny_llama.config._attn_implementation = impl
    try:
        cache = kvcache.new_cache(tiny_llama.config)
        with torch.inference_mode():
            kvcache.call(tiny_llama, cache, input_ids=ids[:, :24], use_cache=True)
            hook = kvcache.head_mask_hook(lambda m, c: hidden if c is cache else None)
            with kvcache.attention_hooks(tiny_llama, pre=hook):
                got = kvcache.feed(tiny_llama, ids[:, 24:], cache, 24)
    finally:
        tiny_llama.config._attn_implementation = "sdpa"
    mask = torch.ones(1, 4, 30, 30, dtype=torch.bool).tril()
    mask[:, :2, 24:, 3:10] = False
    with torch.inference_mode():
        ref = tiny_llama(input_ids=ids, attention_mask=mask).logits[:, -1]
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_visibility_mask_shapes(tiny_llama):
    attn = kvcache.attention_layers(tiny_llama)[0]
    vis = torch.tensor([[[True, False, True], [False, True, True]]])
    m = kvcache.visibility_mask(vis, past=3, q=2, module=attn, dtype=torch.float32)
    assert m.shape == (1, 4, 2, 5) and m.dtype == torch.bool
    assert m[0, 0, 0].tolist() == [True, False, True, True, False]  # the first new row cannot see the second
    assert m[0, 2, 1].tolist() == [False, True, True, True, True]  # query head 2 is in key/value group 1


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_decode_step_masks_are_built_once_and_equal_a_fresh_one(tiny_llama, impl, monkeypatch):
    """A decoding step's mask is a view of a row built once per layer (rebuilt only when the cache outgrows it),
    with the values :func:`visibility_mask` gives for that step."""
    monkeypatch.setattr(kvcache, "DECODE_ROOM", 3)
    attn = kvcache.attention_layers(tiny_llama)[1]
    vis = torch.rand(1, 2, 6, generator=torch.Generator().manual_seed(0)) > 0.3
    k = torch.zeros(1, 2, 6, 16)
    cache = kvcache.new_cache(tiny_llama.config, [(k, k), (k, k)])
    pre = kvcache.head_mask_hook(lambda m, c: vis if c is cache else None)
    hidden = torch.zeros(1, 1, 64)
    tiny_llama.config._attn_implementation = impl
    masks = []
    try:
        for step in range(12):
            _, kw = pre(attn, (), {"hidden_states": hidden, "cache": cache})
            assert torch.equal(kw["attention_mask"], kvcache.visibility_mask(vis, 6 + step, 1, attn, hidden.dtype))
            masks.append(kw["attention_mask"])
            cache.update(k[:, :, :1], k[:, :, :1], 1)
    finally:
        tiny_llama.config._attn_implementation = "sdpa"
    assert len({m.untyped_storage().data_ptr() for m in masks}) == 3  # built at 6 slots, then at 10 and 14


def test_per_head_masks_run_without_cudnn_attention_and_restore_it(tiny_llama, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the switch is process state, set without a GPU
    was = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        with kvcache.attention_hooks(tiny_llama, post=lambda *a: None):
            assert torch.backends.cuda.cudnn_sdp_enabled()  # scoring hooks alone leave the kernels alone
        with kvcache.attention_hooks(tiny_llama, pre=kvcache.head_mask_hook(lambda m, c: None)):
            assert not torch.backends.cuda.cudnn_sdp_enabled()
            assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.cudnn_sdp_enabled()
        hooks = kvcache.attention_hooks(tiny_llama, pre=kvcache.head_mask_hook(lambda m, c: None))
        with pytest.raises(RuntimeError, match="boom"), hooks:
            raise RuntimeError("boom")
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)


def test_cudnn_sdpa_off_turns_cudnn_attention_off_where_cuda_is(monkeypatch):
    import torch

    from ragcore.cache import cudnn_sdpa_off

    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        cudnn_sdpa_off()  # no CUDA: nothing changes
        assert torch.backends.cuda.cudnn_sdp_enabled()
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        cudnn_sdpa_off()
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def _sdpa(module, q, k, v, mask):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, q, k, v, mask, scaling=0.125)[0]


@pytest.mark.parametrize("align", [1, 8])
@pytest.mark.parametrize("mask_kind", ["per_head", "per_group", "shared", "additive"])
def test_grouped_decode_attention_equals_sdpa(tiny_llama, mask_kind, align, monkeypatch):
    """One query row under any mask SDPA takes: the same output as transformers' SDPA attention (float32), also
    with the 9 slots padded to 16 hidden ones (as on CUDA)."""
    monkeypatch.setitem(kvcache.GROUPED_DECODE, "cpu", align)
    attn = kvcache.attention_layers(tiny_llama)[0]  # 4 query heads in 2 key/value groups
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(3, 4, 1, 16, generator=g),
        torch.randn(3, 2, 9, 16, generator=g),
        torch.randn(3, 2, 9, 16, generator=g),
    )
    mask = torch.rand(3, 4, 1, 9, generator=g) > 0.4
    mask[..., -1] = True  # the new slot is always visible
    if mask_kind == "per_group":
        mask = mask[:, ::2].repeat_interleave(2, dim=1)
    elif mask_kind == "shared":
        mask = mask[:, :1]
    elif mask_kind == "additive":
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    got, none = kvcache.grouped_decode_attention(attn, q, k, v, mask, scaling=0.125)
    assert none is None and got.shape == (3, 1, 4, 16)
    torch.testing.assert_close(got, _sdpa(attn, q, k, v, mask), rtol=1e-5, atol=1e-5)


def test_grouped_decode_attention_leaves_other_calls_to_sdpa(tiny_llama, monkeypatch):
    monkeypatch.setitem(kvcache.GROUPED_DECODE, "cpu", 1)
    attn = kvcache.attention_layers(tiny_llama)[0]
    g = torch.Generator().manual_seed(1)
    q, k, v = (
        torch.randn(1, 4, 3, 16, generator=g),
        torch.randn(1, 2, 5, 16, generator=g),
        torch.randn(1, 2, 5, 16, generator=g),
    )
    mask = torch.ones(1, 1, 3, 5, dtype=torch.bool).tril(diagonal=2)
    mask[..., 0, 0] = False  # not the plain causal mask
    got, _ = kvcache.grouped_decode_attention(attn, q, k, v, mask, scaling=0.125)  # three rows: SDPA's own path
    assert torch.equal(got, _sdpa(attn, q, k, v, mask))


@pytest.mark.parametrize("cached", [2, 0])
def test_rows_after_cached_keys_under_the_causal_mask_run_lower_right_causal(tiny_llama, cached, monkeypatch):
    """Rows fed after cached keys under the causal mask alone run as SDPA under causal_lower_right: the output
    of transformers' SDPA under the mask written out; a mask that hides anything more is not taken for it."""
    from ragcore.cache import lower_right_causal

    monkeypatch.setitem(kvcache.GROUPED_DECODE, "cpu", 1)
    attn = kvcache.attention_layers(tiny_llama)[0]
    g = torch.Generator().manual_seed(2)
    t = 3 + cached
    q, k, v = (
        torch.randn(2, 4, 3, 16, generator=g),
        torch.randn(2, 2, t, 16, generator=g),
        torch.randn(2, 2, t, 16, generator=g),
    )
    mask = torch.ones(2, 1, 3, t, dtype=torch.bool).tril(diagonal=cached)
    assert lower_right_causal(mask, 3, t)
    import torch.nn.attention.bias as bias

    made = []
    monkeypatch.setattr(
        bias, "causal_lower_right", lambda *a: made.append(a) or bias.CausalBias(bias.CausalVariant.LOWER_RIGHT, *a)
    )
    got, _ = kvcache.grouped_decode_attention(attn, q, k, v, mask, scaling=0.125)
    assert made == ([(3, t)] if cached else [])  # a square is SDPA's own causal case
    torch.testing.assert_close(got, _sdpa(attn, q, k, v, mask), rtol=1e-5, atol=1e-5)
    padded = mask.clone()
    padded[1, ..., 0] = False  # the second sequence left-padded
    assert not lower_right_causal(padded, 3, t)
    assert not lower_right_causal(mask.tril(diagonal=cached - 1), 3, t)
    assert not lower_right_causal(mask.expand(2, 4, 3, t), 3, t)  # per-head masks
    for m, want in ((mask, True), (mask, True), (padded, False), (padded, False), (mask, True)):  # kept per tensor
        assert lower_right_causal(m, 3, t, fresh=False) is want
    mask[1, ..., 0] = False  # changed in place: the next fresh read (a forward's first layer) sees it
    assert lower_right_causal(mask, 3, t, fresh=False) and not lower_right_causal(mask, 3, t)


def test_use_grouped_decode_switches_sdpa_models_only():
    model = tiny_model("qwen2")
    kvcache.use_grouped_decode(model)
    assert model.config._attn_implementation == kvcache.ATTN_IMPLEMENTATION
    eager = tiny_model("qwen2")
    eager.config._attn_implementation = "eager"
    kvcache.use_grouped_decode(eager)
    assert eager.config._attn_implementation == "eager"


def test_masked_decoding_steps_run_grouped_and_match_sdpa(tiny_llama, monkeypatch):
    """Decoding steps on a cache under per-head masks: the registered implementation answers them (counted) with
    the logits of the same steps under transformers' SDPA, and of a full forward with the equivalent mask (grouped
    decoding turned on for the CPU, with CUDA's padding of the slots)."""
    ids = random_ids(30)
    hidden = torch.ones(1, 2, 24, dtype=torch.bool)
    hidden[0, 0, 3:10] = False
    hidden[0, 1, 12:20] = False
    monkeypatch.setitem(kvcache.GROUPED_DECODE, "cpu", 8)
    calls = []
    grouped = kvcache.grouped_decode_attention
    monkeypatch.setattr(
        kvcache,
        "grouped_decode_attention",
        lambda m, q, *a, **kw: (calls.append(q.shape[2]), grouped(m, q, *a, **kw))[1],
    )
    kvcache._register_grouped_decode.cache_clear()
    logits = {}
    try:
        for impl in ("sdpa", kvcache.ATTN_IMPLEMENTATION):
            kvcache.use_grouped_decode(tiny_llama)
            tiny_llama.config._attn_implementation = impl
            cache = kvcache.new_cache(tiny_llama.config)
            with torch.inference_mode():
                kvcache.call(tiny_llama, cache, input_ids=ids[:, :24], use_cache=True)
                hook = kvcache.head_mask_hook(lambda m, c, mine=cache: hidden if c is mine else None)
                with kvcache.attention_hooks(tiny_llama, pre=hook):
                    logits[impl] = [kvcache.feed(tiny_llama, ids[:, i : i + 1], cache, i) for i in range(24, 30)]
    finally:
        tiny_llama.config._attn_implementation = "sdpa"
        kvcache._register_grouped_decode.cache_clear()
        kvcache.use_grouped_decode(tiny_llama)
        tiny_llama.config._attn_implementation = "sdpa"
    assert calls.count(1) == 6 * 2  # six steps, two layers, all grouped
    mask = torch.ones(1, 4, 30, 30, dtype=torch.bool).tril()
    mask[:, :2, 24:, 3:10] = False
    mask[:, 2:, 24:, 12:20] = False
    with torch.inference_mode():
        ref = tiny_llama(input_ids=ids, attention_mask=mask).logits[0, 24:]
    for impl, rows in logits.items():
        torch.testing.assert_close(torch.cat(rows), ref, rtol=1e-4, atol=1e-4, msg=impl)


def test_slot_cache_writes_in_place_at_each_layers_fill_count(tiny_llama):
    """A model step on a slot cache writes its keys at each layer's own next slot, in the given buffers (no new
    tensors), and the fill count moves on; attention reads the whole buffer."""
    k0 = torch.zeros(1, 2, 8, 16)
    bufs = [(k0.clone(), k0.clone(), 3), (k0.clone(), k0.clone(), 5)]
    ptrs = [k.data_ptr() for k, _, _ in bufs]
    cache = kvcache.slot_cache(tiny_llama.config, bufs)
    with torch.inference_mode():
        kvcache.call(tiny_llama, cache, input_ids=random_ids(1), position_ids=torch.tensor([[5]]), use_cache=True)
    for li, filled in enumerate((3, 5)):
        k, _ = kvcache.get_kv(cache, li)
        assert k.data_ptr() == ptrs[li] and k.shape[-2] == 8
        assert int(kvcache.slots_filled(cache, li)) == filled + 1
        written = k[0].abs().sum(-1).bool()  # (H_kv, 8)
        assert written[:, filled].all() and not written[:, :filled].any() and not written[:, filled + 1 :].any()
    with pytest.raises(ConfigError, match="layer 0"):
        kvcache.slot_cache(tiny_llama.config, [(k0, k0, 9), (k0, k0, 0)])
