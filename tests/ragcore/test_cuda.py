"""The CUDA-only paths of the attention module and the cache adapter, against their portable counterparts: the
flash kernel's row normalisers (``row_logsumexp``), KVzip's reconstruction scores in bfloat16, and rows fed after
cached keys under the lower-right causal bias. Skipped without a GPU (CI); run on a lent one with
``python -m pytest tests/ragcore/test_cuda.py`` (docs/gpu-runs.md)."""

import pytest
import torch

from ragcore import cache as kvcache
from ragcore.attention import bfloat16_products, max_attention, project_keys, row_logsumexp

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def qwen_layer(dtype: torch.dtype) -> torch.nn.Module:
    """A one-layer random model of qwen2.5-0.5b's attention layout (14 query heads of 64 in 2 groups) on CUDA."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        hidden_size=896, intermediate_size=128, num_hidden_layers=1, num_attention_heads=14, num_key_value_heads=2,
        vocab_size=256, max_position_embeddings=4096,
    )  # fmt: skip
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval().to("cuda", dtype)
    model.config._attn_implementation = "sdpa"
    return model


def test_flash_row_logsumexp_equals_the_blocks():
    torch.manual_seed(0)
    q = torch.randn(1, 14, 300, 64, device="cuda", dtype=torch.bfloat16) * 0.5
    keys = torch.randn(1, 2, 1300, 64, device="cuda", dtype=torch.bfloat16)
    flash = row_logsumexp(q, keys)
    blocks = row_logsumexp(q.float(), keys.float(), flash=False)  # float32 on CUDA: no flash kernel
    torch.testing.assert_close(flash, blocks, rtol=1e-3, atol=1e-3)


def test_max_attention_in_bfloat16_on_cuda_matches_float32():
    """KVzip's reconstruction scores in bfloat16, two ways, against float32's: a bfloat16 model (its normalisers
    from its own bfloat16 inputs) and a float32 model's product cast to bfloat16 (``dtype``: float32 normalisers,
    which do not carry the product's rounding, so about twice the first way's error); both keep nearly the same
    top tokens per head. An H200 has native bfloat16."""
    assert bfloat16_products("cuda")
    model = qwen_layer(torch.float32)
    attn = model.model.layers[0].self_attn
    torch.manual_seed(1)
    h = torch.randn(1, 700, 896, device="cuda") * 3
    pe = model.model.rotary_emb(h, torch.arange(2000, 2700, device="cuda")[None])
    keys = torch.randn(1, 2, 2700, 64, device="cuda") * 3
    with torch.inference_mode():
        keys[:, :, 2000:] = project_keys(attn, h, pe)
        want = max_attention(attn, h, pe, keys, 2000)  # float32 on CUDA: the blocks' normalisers
        cast = max_attention(attn, h, pe, keys, 2000, dtype=torch.bfloat16)
        attn.bfloat16()
        model16 = max_attention(attn, h.bfloat16(), tuple(x.bfloat16() for x in pe), keys.bfloat16(), 2000)
    assert cast.dtype == model16.dtype == torch.float32

    def median_error(got: torch.Tensor) -> float:
        return float(((got - want).abs() / want.clamp_min(1e-6)).median())

    for got, worst, overlap in ((model16, 0.03, 190), (cast, 0.08, 175)):
        assert (got - want).abs().max() < worst * want.max()
        for a, b in zip(got[0], want[0]):  # per key/value head: the same tokens on top
            assert len(set(a.topk(200).indices.tolist()) & set(b.topk(200).indices.tolist())) >= overlap
    assert median_error(model16) < median_error(cast) < 0.02


def test_rows_after_cached_keys_run_lower_right_causal_on_cuda():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    model = qwen_layer(torch.bfloat16)
    attn = kvcache.attention_layers(model)[0]
    torch.manual_seed(2)
    q = torch.randn(1, 14, 500, 64, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 2, 3000, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    mask = torch.ones(1, 1, 500, 3000, dtype=torch.bool, device="cuda").tril(diagonal=2500)
    got, _ = kvcache.grouped_decode_attention(attn, q, k, v, mask, scaling=0.125)
    want, _ = sdpa_attention_forward(attn, q, k, v, mask, scaling=0.125)
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_attention_with_lse_on_cuda_matches_sdpa_and_the_blocks():
    """The flash kernel's two calls (own keys causal, cached keys all visible), joined by their normalisers: the
    output of SDPA under the lower-right causal mask and the blocks' float32 normalisers."""
    from torch.nn.attention.bias import causal_lower_right

    from ragcore.attention import attention_with_lse

    torch.manual_seed(3)
    q = torch.randn(1, 14, 500, 64, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 2, 3000, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    out, lse = attention_with_lse(q, k, v, 0.125)
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(7, 1), v.repeat_interleave(7, 1), attn_mask=causal_lower_right(500, 3000), scale=0.125
    )
    assert out.dtype == torch.bfloat16 and lse.shape == (1, 14, 500)
    torch.testing.assert_close(out, want, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(lse, row_logsumexp(q.float() * 0.125, k.float(), flash=False), rtol=1e-3, atol=1e-2)


def test_recorded_row_softmax_on_cuda_gives_kvzips_scores():
    """Inside record_row_softmax on CUDA, rows after cached keys leave their queries and normalisers, and
    max_attention from them matches max_attention from the layer's input (bfloat16 rounding)."""
    model = qwen_layer(torch.bfloat16)
    kvcache.use_grouped_decode(model)
    ids = torch.randint(0, 256, (1, 2600), device="cuda", generator=torch.Generator("cuda").manual_seed(4))
    seen, recorded = {}, {}

    def capture(module, args, kwargs, output):
        keys, _ = kvcache.get_kv(kvcache.from_call(kwargs), module.layer_idx)
        seen["x"] = (kwargs["hidden_states"], kwargs["position_embeddings"], keys)

    with torch.inference_mode():
        cache = kvcache.new_cache(model.config)
        kvcache.call(model, cache, input_ids=ids[:, :2000], use_cache=True)
        pos = torch.arange(2000, 2600, device="cuda")[None]
        with kvcache.attention_hooks(model, post=capture), kvcache.record_row_softmax(recorded):
            kvcache.call(model, cache, input_ids=ids[:, 2000:], position_ids=pos, use_cache=True)
        attn = kvcache.attention_layers(model)[0]
        h, pe, keys = seen["x"]
        want = max_attention(attn, h, pe, keys, 2000)
        got = max_attention(attn, h, pe, keys, 2000, softmax=recorded[0])
    assert (got - want).abs().max() < 0.03 * want.max()
