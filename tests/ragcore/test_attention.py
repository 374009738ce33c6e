"""The attention module against eager attention, on the bundled models and tiny random-init ones."""

import re

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from ragcore import cache as kvcache
from ragcore.attention import (
    attention_to_spans,
    decoder_layers,
    layer_input,
    max_attention,
    project_keys,
    rows_attention,
)
from ragcore.errors import ConfigError
from ragcore.models import load_generator
from ragcore.prompt import build_prompt
from ragcore.types import Chunk
from tests.helpers import tiny_model

PASSAGES = [Chunk("The Eiffel Tower was completed in 1889.", "e"), Chunk("Bananas are yellow fruit.", "b")]
Q = "When was the Eiffel Tower completed?"


def _eager(model, ids):
    was, model.config._attn_implementation = model.config._attn_implementation, "eager"
    try:
        with torch.inference_mode():
            att = model(ids, output_attentions=True).attentions
    finally:
        model.config._attn_implementation = was
    return torch.stack([a[0] for a in att])  # (L, H, T, T)


@pytest.fixture(scope="module", params=["smollm2-135m", "qwen2.5-0.5b"])
def bundled(request):
    model, tok = load_generator(request.param, "cpu")
    return model, tok


@pytest.mark.parametrize("rows", ["last", "question"])
def test_matches_eager_on_bundled_models(bundled, rows):
    model, tok = bundled
    p = build_prompt(tok, Q, PASSAGES)
    ref = _eager(model, p.input_ids)
    assert model.config._attn_implementation == kvcache.ATTN_IMPLEMENTATION  # load_generator's: SDPA + grouped decoding
    got = attention_to_spans(model, p.input_ids, p.spans, rows, reduce_rows=False)
    a, b = (len(p) - 1, len(p)) if rows == "last" else p.spans["question"]
    assert got.tokens.shape == (ref.shape[0], ref.shape[1], b - a, len(p))
    assert (got.tokens - ref[:, :, a:b]).abs().max() < 1e-4
    assert torch.allclose(got.tokens.sum(-1), torch.ones(()), atol=1e-4)
    # span masses are sums over their tokens, averaged over rows when reduced
    red = attention_to_spans(model, p.input_ids, p.spans, rows)
    s0, s1 = p.spans["passage:1"]
    assert torch.allclose(red.spans["passage:1"], ref[:, :, a:b, s0:s1].sum(-1).mean(-1), atol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_matches_eager_on_tiny_models_and_layer_subsets(kind):
    model = tiny_model(kind, layers=3, vocab=128)
    ids = torch.randint(0, 128, (1, 40))
    ref = _eager(model, ids)
    got = attention_to_spans(model, ids, {"a": (0, 10)}, [5, 17, 39], layers=[0, 2], reduce_rows=False)
    assert got.layers == [0, 2]
    assert (got.tokens - ref[[0, 2]][:, :, [5, 17, 39]]).abs().max() < 1e-5
    assert got.tokens[..., 0, 6:].abs().max() == 0  # causal: row 5 sees nothing after itself


def test_rows_attention_with_cached_keys_offset():
    """Rows fed after a cache see the cached keys plus themselves: key_offset shifts the causal mask."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=64,
    )
    model = AutoModelForCausalLM.from_config(cfg).eval()
    attn = model.model.layers[0].self_attn
    h = torch.randn(1, 12, 32)
    pe = model.model.rotary_emb(h, torch.arange(12)[None])
    full = rows_attention(attn, h, pe, torch.arange(12))
    tail = rows_attention(attn, h, pe, torch.arange(8, 12))
    assert torch.allclose(full[:, :, 8:], tail, atol=1e-6)


def test_bad_rows(bundled):
    model, tok = bundled
    p = build_prompt(tok, Q, PASSAGES)
    with pytest.raises(ConfigError, match="'answer'"):
        attention_to_spans(model, p.input_ids, p.spans, "answer")
    with pytest.raises(ConfigError, match="outside"):
        attention_to_spans(model, p.input_ids, p.spans, [len(p) + 3])


def test_rows_attention_batch_equals_one_sequence_at_a_time():
    """Right-padded sequences of different lengths in one forward give each sequence's own rows' attention."""
    import torch

    from ragcore.attention import attention_to_spans, rows_attention_batch
    from tests.helpers import random_ids, tiny_model

    model = tiny_model()
    seqs = [random_ids(n, seed=n)[0] for n in (9, 14, 11)]
    rows = [range(len(s) - 4, len(s) - 1) for s in seqs]
    got = rows_attention_batch(model, seqs, rows)
    for s, r, g in zip(seqs, rows, got):
        want = attention_to_spans(model, s[None], rows=list(r), reduce_rows=False).tokens.float().mean((0, 1))
        assert g.shape == (len(r), len(s))
        torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fused", [False, True])  # CPU's way and CUDA's (the flash kernel's normalisers)
@pytest.mark.parametrize("cells", [1 << 20, 100])  # one block of rows; blocks of one row
def test_max_attention_equals_the_max_of_rows_attention(cells, fused):
    """max_attention (KVzip's reconstruction score) is rows_attention over the first n_keys keys, maximised over
    the rows and each group's query heads, for rows fed after cached keys."""
    model = tiny_model("qwen2", layers=1)
    attn = model.model.layers[0].self_attn
    torch.manual_seed(1)
    h = torch.randn(1, 30, 64)
    pe = model.model.rotary_emb(h, torch.arange(30)[None])
    keys = torch.randn(1, 2, 50, 16)  # 20 cached keys, then the 30 rows' own
    keys[:, :, 20:] = project_keys(attn, h, pe)
    ref = rows_attention(attn, h, pe, slice(None), keys, key_offset=20)[..., :24]  # (1, 4, 30, 24)
    ref = ref.amax(2).view(1, 2, 2, 24).amax(2)
    got = max_attention(attn, h, pe, keys, 24, cells=cells, fused=fused)
    assert got.shape == (1, 2, 24) and got.dtype == torch.float32
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="n_keys=51"):
        max_attention(attn, h, pe, keys, 51)
    # KVzip+'s weights: per row, and per query head and key
    rs, cs = torch.rand(1, 30) + 0.5, torch.rand(1, 2, 2, 24) + 0.5
    full = rows_attention(attn, h, pe, slice(None), keys, key_offset=20)[..., :24].view(1, 2, 2, 30, 24)
    ref = (full * rs[:, None, None, :, None] * cs[:, :, :, None]).amax((2, 3))
    got = max_attention(attn, h, pe, keys, 24, cells=cells, row_scale=rs, col_scale=cs, fused=fused)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-7)
    # a row of scale 0 counts for nothing (no NaN); no rows: nothing attended
    rs[0, 5:] = 0
    ref = (full * rs[:, None, None, :, None] * cs[:, :, :, None]).amax((2, 3))
    got = max_attention(attn, h, pe, keys, 24, cells=cells, row_scale=rs, col_scale=cs, fused=fused)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-7)
    none = max_attention(attn, h[:, :0], pe, keys[:, :, :20], 20, fused=fused)
    assert torch.equal(none, torch.zeros(1, 2, 20))
    # bfloat16 products (the fused way, normalisers from the float32 queries): bfloat16's rounding, not float32's
    ref = max_attention(attn, h, pe, keys, 24, cells=cells, fused=fused)
    if not fused:
        with pytest.raises(ConfigError, match="dtype=torch.bfloat16 needs the fused way, got fused=False"):
            max_attention(attn, h, pe, keys, 24, cells=cells, fused=fused, dtype=torch.bfloat16)
        return
    got = max_attention(attn, h, pe, keys, 24, cells=cells, dtype=torch.bfloat16)
    assert got.dtype == torch.float32 and not torch.equal(got, ref)
    torch.testing.assert_close(got, ref, rtol=0.05, atol=1e-3)
    for bad in ("bfloat16", torch.int8, torch.float8_e4m3fn):
        with pytest.raises(ConfigError, match=rf"dtype must be one of torch.float16, .*, got {bad!r}"):
            max_attention(attn, h, pe, keys, 24, dtype=bad)


def test_bfloat16_products_reads_any_device_name():
    """bfloat16_products takes a device or its name, in any case and with an index; a name of no device is refused."""
    from ragcore.attention import bfloat16_products

    cpu = bfloat16_products("cpu")
    assert bfloat16_products(torch.device("cpu")) == bfloat16_products("CPU") == cpu
    assert bfloat16_products("cuda:0") == bfloat16_products("cuda")
    assert bfloat16_products("meta") is False
    with pytest.raises(ConfigError, match="not a device: 'gpu0'"):
        bfloat16_products("gpu0")


@torch.inference_mode()  # layer_input's tensors are inference tensors
def _scores_up_to(model, ids, layer, rows):
    x = layer_input(model, ids, layer)
    return x, rows_attention(x.attn, x.hidden, x.position_embeddings, rows)[0].cpu()  # (H, R, T)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_layer_input_equals_the_full_forward_on_tiny_models(kind):
    """The decoder run up to one layer gives that layer's normed input of the whole forward, bit for bit, and
    the same attention scores as attention_to_spans, at every layer, counted from either end."""
    model = tiny_model(kind, layers=3, vocab=128)
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        hs = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    rows = torch.arange(30, 40)
    for layer in (0, 1, 2, -1, -3):
        x, got = _scores_up_to(model, ids, layer, rows)
        assert x.layer == layer % 3 and x.attn is decoder_layers(model)[layer % 3].self_attn
        assert torch.equal(x.hidden, decoder_layers(model)[x.layer].input_layernorm(hs[x.layer]))
        ref = attention_to_spans(model, ids, rows=(30, 40), layers=[x.layer], reduce_rows=False).tokens[0]
        assert torch.equal(got, ref)
        neg = attention_to_spans(model, ids, rows=(30, 40), layers=[x.layer - 3], reduce_rows=False)
        assert neg.layers == [x.layer] and torch.equal(neg.tokens[0], ref)  # negative layers: the same layer
    with pytest.raises(ConfigError, match="layers must be in"):
        attention_to_spans(model, ids, rows=(30, 40), layers=[3])
    for bad in (3, -4):
        with pytest.raises(ConfigError, match=r"layer must be in \[-3, 2\]"):
            layer_input(model, ids, bad)


def test_layer_input_runs_nothing_after_the_layer():
    """Layers after the read one, the final norm and the LM head never run; the read layer's attention neither
    (only its input norm)."""
    model = tiny_model("llama", layers=4, vocab=128)
    ran = []
    inner = model.model
    named = {f"layer{i}": ly for i, ly in enumerate(inner.layers)}
    named |= {"attn2": inner.layers[2].self_attn, "norm2": inner.layers[2].input_layernorm}
    named |= {"norm": inner.norm, "lm_head": model.lm_head}
    handles = [m.register_forward_pre_hook(lambda _m, _a, n=n: ran.append(n)) for n, m in named.items()]
    try:
        layer_input(model, torch.randint(0, 128, (1, 12)), 2)
    finally:
        for h in handles:
            h.remove()
    assert ran == ["layer0", "layer1", "norm2"]


@pytest.mark.parametrize("layer", [9, -1])
def test_layer_input_scores_equal_the_full_forward_on_bundled_models(bundled, layer):
    model, tok = bundled
    p = build_prompt(tok, Q, PASSAGES)
    a, b = p.spans["question"]
    x, got = _scores_up_to(model, p.input_ids, layer, torch.arange(a, b))
    assert x.layer == layer % len(decoder_layers(model))
    ref = attention_to_spans(model, p.input_ids, p.spans, "question", [x.layer], reduce_rows=False).tokens[0]
    assert torch.equal(got, ref)


@pytest.mark.parametrize("flash", [True, False])
def test_row_logsumexp_is_each_rows_normaliser_over_the_keys_it_sees(flash):
    """row_logsumexp (from the flash kernel, or in blocks) is the log-sum-exp of each row's causal scores, rows
    after cached keys, query heads reading their group's key head."""
    from ragcore.attention import row_logsumexp

    torch.manual_seed(2)
    q, keys = torch.randn(2, 4, 30, 16), torch.randn(2, 2, 50, 16)
    scores = q @ keys.repeat_interleave(2, dim=1).transpose(-1, -2)  # (2, 4, 30, 50)
    hidden = torch.arange(50)[None] > torch.arange(30)[:, None] + 20  # row r sees keys <= 20 + r
    want = torch.logsumexp(scores.masked_fill(hidden, float("-inf")), -1)
    got = row_logsumexp(q, keys, flash=flash)
    assert got.shape == (2, 4, 30) and got.dtype == torch.float32
    assert row_logsumexp(q[:, :, :0], keys, flash=flash).shape == (2, 4, 0)
    with pytest.raises(ConfigError, match="30 rows are more than the 20 keys"):
        row_logsumexp(q, keys[:, :, :20], flash=flash)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    square = torch.logsumexp(scores[..., :5, :5].masked_fill(hidden[:5, 20:25], float("-inf")), -1)
    torch.testing.assert_close(row_logsumexp(q[:, :, :5], keys[:, :, :5], flash=flash), square)  # no cached keys


@pytest.mark.parametrize("fused", [False, True])
def test_max_attention_in_bfloat16_keeps_the_precision_of_its_scores(fused):
    """In bfloat16, max_attention's probabilities stay within bfloat16's rounding of the float32 ones, though
    each row's normaliser (tens) is folded into the product: it goes in as two parts, high and low."""
    model = tiny_model("qwen2", layers=1)
    attn = model.model.layers[0].self_attn
    torch.manual_seed(3)
    h = torch.randn(1, 40, 64) * 4  # large scores: normalisers far from 0
    pe = model.model.rotary_emb(h, torch.arange(40)[None])
    keys = torch.randn(1, 2, 100, 16) * 4
    keys[:, :, 60:] = project_keys(attn, h, pe)
    rs = torch.rand(1, 40) * 1e-4 + 1e-5  # KVzip+'s row weights are of this size (1 / ||h||)
    want = max_attention(attn, h, pe, keys, 60)
    want_rs = max_attention(attn, h, pe, keys, 60, row_scale=rs)
    args = (h.bfloat16(), tuple(x.bfloat16() for x in pe), keys.bfloat16(), 60)
    got = max_attention(attn.to(torch.bfloat16), *args, fused=fused)
    got_rs = max_attention(attn, *args, row_scale=rs, fused=fused)
    attn.float()
    assert got.dtype == torch.float32
    assert (got - want).abs().max() < 0.02 * want.max()
    assert (got_rs - want_rs).abs().max() < 0.02 * want_rs.max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cached", [20, 0])
def test_attention_with_lse_is_lower_right_causal_attention_and_its_normalisers(cached, dtype):
    """attention_with_lse: the output of SDPA under the lower-right causal mask (query heads reading their group's
    key head) and each row's log-sum-exp of its scaled scores over the keys it sees."""
    from torch.nn.attention.bias import causal_lower_right

    from ragcore.attention import attention_with_lse

    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 4, 30, 16, generator=g)
    k, v = torch.randn(2, 2, 30 + cached, 16, generator=g), torch.randn(2, 2, 30 + cached, 16, generator=g)
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=causal_lower_right(30, 30 + cached)
    )
    scores = q @ k.repeat_interleave(2, dim=1).transpose(-1, -2) * 0.25
    hidden = torch.arange(30 + cached)[None] > torch.arange(30)[:, None] + cached
    want_lse = torch.logsumexp(scores.masked_fill(hidden, float("-inf")), -1)
    out, lse = attention_with_lse(q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.shape == (2, 4, 30, 16) and out.dtype == dtype and lse.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.float(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(lse, want_lse, rtol=tol, atol=tol)
    out, lse = attention_with_lse(q[:, :, :0], k, v)
    assert out.shape == (2, 4, 0, 16) and lse.shape == (2, 4, 0)
    with pytest.raises(ConfigError, match="30 rows are more than the 10 keys"):
        attention_with_lse(q, k[:, :, :10], v[:, :, :10])


def test_recorded_row_softmax_gives_the_same_outputs_and_max_attention():
    """Rows fed after cached keys inside record_row_softmax: the model's logits are those of the plain forward,
    every layer leaves its scaled queries and normalisers, and max_attention from them equals max_attention
    computed from the layer's input."""
    from ragcore.attention import RowSoftmax

    model = tiny_model("qwen2", layers=2)
    kvcache.use_grouped_decode(model)
    ids = torch.randint(3, 256, (1, 50), generator=torch.Generator().manual_seed(5))
    pos = torch.arange(20, 50)[None]
    seen = {}

    def capture(module, args, kwargs, output):
        keys, _ = kvcache.get_kv(kvcache.from_call(kwargs), module.layer_idx)
        seen[module.layer_idx] = (kwargs["hidden_states"], kwargs["position_embeddings"], keys)

    with torch.no_grad():
        plain_cache, rec_cache = (kvcache.new_cache(model.config) for _ in range(2))
        for c in (plain_cache, rec_cache):
            kvcache.call(model, c, input_ids=ids[:, :20], use_cache=True)
        want = kvcache.call(model, plain_cache, input_ids=ids[:, 20:], position_ids=pos, use_cache=True).logits
        recorded = {}
        with kvcache.attention_hooks(model, post=capture), kvcache.record_row_softmax(recorded):
            got = kvcache.call(model, rec_cache, input_ids=ids[:, 20:], position_ids=pos, use_cache=True).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert sorted(recorded) == [0, 1] and all(isinstance(r, RowSoftmax) for r in recorded.values())
    for layer, attn in enumerate(kvcache.attention_layers(model)):
        hidden, pe, keys = seen[layer]
        assert recorded[layer].queries.shape == (1, 4, 30, 16) and recorded[layer].lse.shape == (1, 4, 30)
        want = max_attention(attn, hidden, pe, keys, 20, fused=False)
        got = max_attention(attn, hidden, pe, keys, 20, softmax=recorded[layer])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="do not fit 29 rows"):
        max_attention(attn, hidden[:, 1:], pe, keys, 20, softmax=recorded[1])
    recorded.clear()
    with torch.no_grad():  # outside the block nothing is recorded
        kvcache.call(model, rec_cache, input_ids=ids[:, 20:21], use_cache=True)
    assert recorded == {}


def test_attention_with_lse_refuses_shapes_that_do_not_fit_and_reads_strided_inputs():
    """Shapes the flash kernel would read out of bounds are refused with the shapes quoted; a query or keys
    whose last dimension is strided give the same result as contiguous copies."""
    from ragcore.attention import attention_with_lse, row_logsumexp

    g = torch.Generator().manual_seed(6)
    q, k, v = (
        torch.randn(2, 4, 5, 8, generator=g),
        torch.randn(2, 2, 9, 8, generator=g),
        torch.randn(2, 2, 9, 8, generator=g),
    )
    bad = {
        "query heads a multiple": (torch.randn(2, 3, 5, 8), k, v),
        "query heads a multiple ": (q[:, :1], k, v),  # fewer query heads than key heads
        "same batch": (q[:1], k, v),
        "values as many": (q, k, v[:, :, :8]),
        "(B, H, T, D)": (q[0], k, v),
    }
    for what, args in bad.items():
        with pytest.raises(ConfigError, match=re.escape(what.strip())):
            attention_with_lse(*args)
    with pytest.raises(ConfigError, match="query heads a multiple"):
        row_logsumexp(q[:, :1], k)
    want_out, want_lse = attention_with_lse(q, k, v)
    strided_q = torch.randn(2, 4, 5, 16, generator=g)[..., ::2]
    strided_q.copy_(q)
    strided_k = k.transpose(-1, -2).contiguous().transpose(-1, -2)
    got_out, got_lse = attention_with_lse(strided_q, strided_k, v)
    torch.testing.assert_close(got_out, want_out)
    torch.testing.assert_close(got_lse, want_lse)
    same_heads = attention_with_lse(q[:, :2], strided_k, v)  # H == H_kv: the keys reach the kernel as they are
    torch.testing.assert_close(same_heads[1], attention_with_lse(q[:, :2], k, v)[1])
    torch.testing.assert_close(row_logsumexp(strided_q * 0.5, k), row_logsumexp(q * 0.5, k))
