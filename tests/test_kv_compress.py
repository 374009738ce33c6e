"""KV-cache compression: the cache adapter, every compressor on tiny Llama / Qwen2 models, generator integration."""

import pytest
import torch
import transformers

from compress.kv import COMPRESSORS, KVCompressor, get_compressor
from compress.kv.snapkv import pool1d
from ragcore import cache as kvcache
from ragcore.attention import decoder_layers
from ragcore.cache import feed
from ragcore.errors import ConfigError
from ragcore.generator import GenerationConfig, Generator
from ragcore.prompt import Prompt

NAMES = list(COMPRESSORS)
T, Q = 64, 8  # context and question tokens of the synthetic prompts


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The test machine has 2 shared cores; one intra-op thread avoids oversubscription (10x faster here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny(kind: str) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    kw = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=512,
    )
    cfg = transformers.LlamaConfig(**kw) if kind == "llama" else transformers.Qwen2Config(**kw)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request):
    return _tiny(request.param)


@pytest.fixture(scope="module")
def tiny_llama():
    return _tiny("llama")


def _ids(n: int = T + Q, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 256, (1, n), generator=torch.Generator().manual_seed(seed))


def _tiny_generator(model, tokenizer) -> Generator:
    g = Generator("tiny")
    g.model, g.tokenizer, g.eos_ids = model, tokenizer, set()
    return g


def _decodes_alone_and_batched(model, tokenizer, comp: KVCompressor) -> None:
    """Two prompts of different lengths decode under ``comp`` with a smaller cache, alone and batched alike."""
    g = _tiny_generator(model, tokenizer)
    prompts = [Prompt("", _ids(t + Q, seed=t), {"question": (t, t + Q)}) for t in (T, T - 9)]
    cfg = GenerationConfig(max_new_tokens=6)
    one = [g.generate(p, config=cfg, compressor=comp) for p in prompts]
    assert one[0].stats["kv_bytes"] < one[0].stats["kv_bytes_full"]
    many = g.generate_batch(prompts, config=cfg, compressor=comp)
    assert [x.token_ids for x in many] == [x.token_ids for x in one] and _no_hooks(model)


def _no_hooks(model) -> bool:
    """None of a compressor's hooks left (transformers may add its own output-capturing hooks)."""

    def ours(hooks) -> bool:
        return any(isinstance(getattr(h, "__self__", None), KVCompressor) for h in hooks.values())

    return not any(
        ours(ly.self_attn._forward_hooks) or ours(ly.self_attn._forward_pre_hooks) for ly in decoder_layers(model)
    )


def _prefill(model, comp: KVCompressor, ids: torch.Tensor):
    cache = transformers.DynamicCache(config=model.config)
    with torch.inference_mode(), comp.apply(model) as rep:
        kvcache.call(model, cache, input_ids=ids, use_cache=True)
        logits = feed(model, _ids(Q, seed=2), cache, ids.shape[1])  # question on the compressed cache
        assert torch.isfinite(logits).all()
        assert not _no_hooks(model)
    return cache, rep


# ---- the cache adapter ------------------------------------------------------------------------------------


def test_cache_adapter_prune_and_bytes(tiny_llama):
    cache = transformers.DynamicCache(config=tiny_llama.config)
    with torch.inference_mode():
        kvcache.call(tiny_llama, cache, input_ids=_ids(20), use_cache=True)
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


def test_cache_adapter_legacy_lists():
    class Legacy:  # transformers 4.x DynamicCache layout
        key_cache = [torch.zeros(1, 2, 10, 4)]
        value_cache = [torch.ones(1, 2, 10, 4)]

    c = Legacy()
    assert kvcache.seq_len(c) == 10 and kvcache.kv_bytes(c) == 2 * 80 * 4
    kvcache.prune(c, 0, torch.tensor([[[1, 2], [3, 4]]]))
    assert c.key_cache[0].shape == (1, 2, 2, 4) and kvcache.kv_bytes(c) == 2 * 16 * 4


# ---- every compressor, both architectures -----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spec", [{"ratio": 0.5}, {"budget": 20}], ids=["ratio", "budget"])
def test_matrix(tiny, name, spec):
    comp = get_compressor(name, **spec)
    ids = _ids(T)
    cache, rep = _prefill(tiny, comp, ids)
    assert _no_hooks(tiny)
    k = 32 if "ratio" in spec else 20
    n_kv = tiny.config.num_key_value_heads
    full = kvcache.bytes_per_token(cache) * T
    assert rep.kv_bytes_before == full and set(rep.tokens_kept) == {0, 1}
    for layer in range(2):
        keys, values = kvcache.get_kv(cache, layer)
        assert keys.shape[:2] == values.shape[:2] == (1, n_kv)
        phys = keys.shape[2] - Q  # the question's tokens were appended after compression
        assert phys == rep.cache_len[layer]
        kept = rep.tokens_kept[layer]
        if name == "razor":  # retrieval heads keep everything, the others the budget
            assert all(x in (k, T) for x in kept)
        elif name == "adaptive":  # the layer's total budget, spread unevenly
            assert sum(kept) == k * n_kv and phys == max(kept)
        elif name in ("global", "retrieval"):  # the whole cache's budget, spread over layers and heads
            assert phys == max(kept)
        else:
            assert kept == [k] * n_kv and phys == k
    if name in ("global", "retrieval"):  # (retrieval: up to rounding, one entry per head)
        assert abs(sum(sum(v) for v in rep.tokens_kept.values()) - k * n_kv * 2) <= 2 * n_kv
    if rep.masks_only:
        assert name in ("adaptive", "global", "razor", "retrieval")
        assert rep.kv_bytes_after <= full
    else:
        assert rep.kv_bytes_after == full * k // T
    assert kvcache.kv_bytes(cache) == rep.kv_bytes_after + kvcache.bytes_per_token(cache) * Q


def test_hooks_removed_on_error():
    model = _tiny("llama")
    comp = get_compressor("snapkv", ratio=0.5)
    with pytest.raises(RuntimeError, match="boom"), comp.apply(model):
        assert not _no_hooks(model)
        raise RuntimeError("boom")
    for layer in decoder_layers(model):
        assert not layer.self_attn._forward_hooks and not layer.self_attn._forward_pre_hooks


def test_failing_score_still_removes_hooks(tiny_llama):
    class Broken(KVCompressor):
        def score(self, *a, **kw):
            raise ValueError("bad score")

    cache = transformers.DynamicCache(config=tiny_llama.config)
    with pytest.raises(ValueError, match="bad score"), Broken(ratio=0.5).apply(tiny_llama):
        kvcache.call(tiny_llama, cache, input_ids=_ids(T), use_cache=True)
    assert _no_hooks(tiny_llama)


def test_decode_does_not_compress(tiny_llama):
    comp = get_compressor("knorm", ratio=0.5)
    cache = transformers.DynamicCache(config=tiny_llama.config)
    with torch.inference_mode(), comp.apply(tiny_llama):
        kvcache.call(tiny_llama, cache, input_ids=_ids(T), use_cache=True)
        for i in range(3):
            feed(tiny_llama, torch.tensor([[5]]), cache, T + i)
    assert kvcache.seq_len(cache) == 32 + 3


# ---- correctness of the compressed cache ----------------------------------------------------------------


def test_pruned_cache_matches_masked_full_forward(tiny):
    """StreamingLLM-pruned context + question at absolute positions == one full forward whose question rows
    cannot see the evicted context tokens (positions and causal masking of the question are right)."""
    ids = _ids(T + Q)
    comp = get_compressor("streaming_llm", budget=20, n_sink=4)
    cache = transformers.DynamicCache(config=tiny.config)
    with torch.inference_mode(), comp.apply(tiny):
        kvcache.call(tiny, cache, input_ids=ids[:, :T], use_cache=True)
        got = feed(tiny, ids[:, T:], cache, T)
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
    ids = _ids(T + Q)
    comp = get_compressor("razor", budget=20, retrieval_heads={0: [1], 1: [1]})
    cache = transformers.DynamicCache(config=tiny_llama.config)
    with torch.inference_mode(), comp.apply(tiny_llama) as rep:
        kvcache.call(tiny_llama, cache, input_ids=ids[:, :T], use_cache=True)
        got = feed(tiny_llama, ids[:, T:], cache, T)
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
    ids = _ids(T + Q)
    out = []
    for comp in (get_compressor("razor", ratio=0.5, retrieval_heads={}), get_compressor("streaming_llm", ratio=0.5)):
        cache = transformers.DynamicCache(config=tiny_llama.config)
        with torch.inference_mode(), comp.apply(tiny_llama):
            kvcache.call(tiny_llama, cache, input_ids=ids[:, :T], use_cache=True)
            out.append(feed(tiny_llama, ids[:, T:], cache, T))
            out.append(feed(tiny_llama, torch.tensor([[7]]), cache, T + Q))
    torch.testing.assert_close(out[0], out[2], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[1], out[3], rtol=1e-4, atol=1e-4)


def test_uneven_masks_same_under_eager_and_sdpa(tiny_llama):
    ids = _ids(T + Q)
    res = []
    for impl in ("sdpa", "eager"):
        tiny_llama.config._attn_implementation = impl
        comp = get_compressor("razor", ratio=0.5, retrieval_heads={0: [1], 1: [0]})
        cache = transformers.DynamicCache(config=tiny_llama.config)
        try:
            with torch.inference_mode(), comp.apply(tiny_llama) as rep:
                kvcache.call(tiny_llama, cache, input_ids=ids[:, :T], use_cache=True)
                res.append(feed(tiny_llama, ids[:, T:], cache, T))
                res.append(feed(tiny_llama, torch.tensor([[9]]), cache, T + Q))  # decoding: one query row
        finally:
            tiny_llama.config._attn_implementation = "sdpa"
        assert rep.masks_only and rep.tokens_kept == {0: [32, 64], 1: [64, 32]}
    torch.testing.assert_close(res[0], res[2], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(res[1], res[3], rtol=1e-4, atol=1e-4)


# ---- generator integration ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_ratio_zero_generation_is_unchanged_tiny(tiny, smol, name):
    g = _tiny_generator(tiny, smol.tokenizer)
    p = Prompt("", _ids(T + Q), {"question": (T, T + Q)})
    cfg = GenerationConfig(max_new_tokens=6)
    ref = g.generate(p, config=cfg)
    got = g.generate(p, config=cfg, compressor=get_compressor(name, ratio=0.0))
    assert got.token_ids == ref.token_ids
    assert got.stats["kv_bytes"] == got.stats["kv_bytes_full"] == ref.stats["kv_bytes"]
    comp = get_compressor(name, ratio=0.5)
    half = g.generate(p, config=cfg, compressor=comp)
    assert len(half.token_ids) == 6 and _no_hooks(tiny)
    assert half.stats["kv_bytes"] < half.stats["kv_bytes_full"] or half.stats["masks_only"]
    assert half.stats["kv_report"]["tokens_before"] == {0: T, 1: T}  # only the context was compressed
    aware = g.generate(p, config=cfg, compressor=comp, query_aware=True)
    assert aware.stats["kv_report"]["tokens_before"] == {0: T + Q, 1: T + Q}


def test_ratio_zero_generation_is_unchanged_smollm2(smol):
    from tests.test_generator import PASSAGES
    from tests.test_generator import Q as QUESTION

    cfg = GenerationConfig(max_new_tokens=10)
    p = smol.prompt(QUESTION, PASSAGES)
    ref = smol.generate(p, config=cfg)
    for name in ("snapkv", "adaptive"):
        got = smol.generate(p, config=cfg, compressor=get_compressor(name, ratio=0.0))
        assert got.token_ids == ref.token_ids
    pieces = list(smol.stream(p, config=cfg, compressor=get_compressor("knorm", ratio=0.0)))
    assert "".join(pieces).strip() == ref.text
    half = smol.generate(p, config=cfg, compressor=get_compressor("streaming_llm", ratio=0.5))
    assert half.stats["kv_bytes"] < 0.75 * half.stats["kv_bytes_full"] and half.token_ids
    assert _no_hooks(smol.model)


@pytest.mark.parametrize("name", ["none", *NAMES])
def test_batch_generation_equals_one_by_one_tiny(tiny, smol, name):
    """Prompts of different lengths, compressed on their own, decoded as one left-padded batch: the same tokens
    as one at a time (uneven head budgets included: their masks travel into the batch)."""
    g = _tiny_generator(tiny, smol.tokenizer)
    prompts = [Prompt("", _ids(t + Q, seed=t), {"question": (t, t + Q)}) for t in (T, T - 9, T + 5)]
    cfg = GenerationConfig(max_new_tokens=6)
    comp = None if name == "none" else get_compressor(name, ratio=0.5)
    one = [g.generate(p, config=cfg, compressor=comp).token_ids for p in prompts]
    many = g.generate_batch(prompts, config=cfg, compressor=comp)
    assert [x.token_ids for x in many] == one
    assert all(x.stats["batch_size"] == 3 for x in many) and _no_hooks(tiny)


def test_batch_generation_equals_one_by_one_smollm2(smol):
    from tests.test_generator import PASSAGES, Q

    cfg = GenerationConfig(max_new_tokens=12)
    prompts = [smol.prompt(Q, PASSAGES), smol.prompt("What colour are bananas?", PASSAGES[::-1])]
    for name in ("none", "snapkv", "adaptive"):
        comp = None if name == "none" else get_compressor(name, ratio=0.5)
        one = [smol.generate(p, config=cfg, compressor=comp) for p in prompts]
        many = smol.generate_batch(prompts, config=cfg, compressor=comp)
        assert [x.text for x in many] == [x.text for x in one], name
        assert [x.stats["kv_bytes"] for x in many] == [x.stats["kv_bytes"] for x in one]
    assert smol.generate_batch([]) == [] and _no_hooks(smol.model)
    with pytest.raises(ConfigError, match="Prompt"):
        smol.generate_batch(["a question"])


def test_chunk_scores_whole_chunks_shared_by_heads():
    from dataclasses import dataclass

    @dataclass
    class Fixed(KVCompressor):
        def score(self, module, hidden, keys, values, position_embeddings, key_offset=0):
            return torch.tensor([[[0.0, 9, 0, 0, 1, 1, 1, 1, 5, 0], [0, 0, 0, 0, 2, 2, 2, 2, 0, 0]]])

    s = get_compressor("chunk", inner=Fixed(), chunk_size=4).score(None, None, None, None, None)
    assert s.shape == (1, 2, 10) and torch.equal(s[0, 0], s[0, 1])  # one choice for every head
    assert len(set(s[0, 0, :4].tolist())) == len(set(s[0, 0, 4:8].tolist())) == len(set(s[0, 0, 8:].tolist())) == 1
    assert s[0, 0, 4] > s[0, 0, 8] > s[0, 0, 0]  # chunk [4, 8) has the most mass per token over both heads
    idx, _ = KVCompressor.select(None, s, 4)
    assert sorted(idx[0, 0].tolist()) == [4, 5, 6, 7]


def test_layers_share_one_selection(tiny_llama):
    """layers:snapkv keeps the same positions in every layer and head, chosen from all layers' votes; plain snapkv
    on the same prompt picks differently per layer (so the equality below is the wrapper's doing)."""
    from compress.kv.layers import LayerShared

    picked: dict[str, dict[int, torch.Tensor]] = {"layers": {}, "snapkv": {}}

    def recording(comp, key):
        orig = comp.prune_layer

        def prune_layer(cache, layer, idx, mask):
            picked[key][layer] = idx.clone()
            orig(cache, layer, idx, mask)

        comp.prune_layer = prune_layer
        return comp

    ids = _ids(T)
    shared = recording(get_compressor("layers:snapkv(window=4)", ratio=0.5), "layers")
    assert isinstance(shared, LayerShared) and shared.label == "layers:snapkv(window=4)"
    _, rep = _prefill(tiny_llama, shared, ids)
    _prefill(tiny_llama, recording(get_compressor("snapkv(window=4)", ratio=0.5), "snapkv"), ids)
    a, b = picked["layers"][0], picked["layers"][1]
    assert a.shape == (1, 2, 32) and torch.equal(a, b) and torch.equal(a[:, 0], a[:, 1])
    assert set(range(T - 4, T)) <= set(a[0, 0].tolist())  # the inner method's window stays protected
    own = picked["snapkv"]
    assert not torch.equal(own[0], own[1]) or not torch.equal(own[0][:, 0], own[0][:, 1])
    assert rep.tokens_kept == {0: [32, 32], 1: [32, 32]} and not rep.masks_only


def test_pyramid_budgets_fall_with_depth(tiny_llama, smol):
    """pyramid:snapkv keeps more in the first layer than in the last, the inner window protected in both, with the
    uniform mean budget; each layer keeps what snapkv with that layer's budget keeps; caches of unequal lengths
    per layer still decode, alone and in a batch."""
    picked: dict[str, dict[int, torch.Tensor]] = {}

    def recording(comp, key):
        orig = comp.prune_layer

        def prune_layer(cache, layer, idx, mask):
            picked.setdefault(key, {})[layer] = idx.clone()
            orig(cache, layer, idx, mask)

        comp.prune_layer = prune_layer
        return comp

    ids = _ids(T)
    comp = recording(get_compressor("pyramid:snapkv(window=4)", ratio=0.5), "pyramid")
    cache, rep = _prefill(tiny_llama, comp, ids)
    # mean budget 32 = 4 protected + 28 shared out as 28 * (2 - 1/20) = 55 and 28 / 20 = 1
    assert rep.tokens_kept == {0: [59, 59], 1: [5, 5]} and rep.cache_len == {0: 59, 1: 5}
    assert rep.kv_bytes_after == kvcache.bytes_per_token(cache) * 32 and not rep.masks_only
    for layer, k in ((0, 59), (1, 5)):
        _prefill(tiny_llama, recording(get_compressor("snapkv(window=4)", budget=k), f"snapkv{k}"), ids)
        got, ref = picked["pyramid"][layer], picked[f"snapkv{k}"][layer]
        assert torch.equal(got.sort(-1).values, ref.sort(-1).values)
        assert set(range(T - 4, T)) <= set(got[0, 0].tolist())
    _decodes_alone_and_batched(tiny_llama, smol.tokenizer, comp)


def test_global_budget_moves_to_the_dispersed_layer(tiny_llama, smol):
    """global: one pool of L x H_kv x k entries: a layer whose scores are spread out takes budget from a layer whose
    scores sit on a few tokens; every head keeps its safeguard; the caches (unequal per layer) still decode."""
    from dataclasses import dataclass

    @dataclass
    class ByLayer(KVCompressor):
        def score(self, module, hidden, keys, values, position_embeddings, key_offset=0):
            t = keys.shape[-2]
            g = torch.Generator().manual_seed(module.layer_idx)
            s = torch.rand(1, keys.shape[1], t, generator=g)
            return s**8 if module.layer_idx == 0 else 1 + s  # layer 0: mass on a few tokens; layer 1: spread

    comp = get_compressor("global", inner=ByLayer(), ratio=0.5)
    cache, rep = _prefill(tiny_llama, comp, _ids(T))
    kept = rep.tokens_kept
    assert sum(kept[0]) + sum(kept[1]) == 32 * 2 * 2 and sum(kept[1]) > sum(kept[0]) + 20
    assert min(kept[0] + kept[1]) >= int(0.2 * 32) and rep.masks_only
    assert rep.cache_len == {0: max(kept[0]), 1: max(kept[1])}
    g = _tiny_generator(tiny_llama, smol.tokenizer)
    prompts = [Prompt("", _ids(t + Q, seed=t), {"question": (t, t + Q)}) for t in (T, T - 9)]
    cfg = GenerationConfig(max_new_tokens=6)
    one = [g.generate(p, config=cfg, compressor=comp).token_ids for p in prompts]
    many = g.generate_batch(prompts, config=cfg, compressor=comp)
    assert [x.token_ids for x in many] == one and _no_hooks(tiny_llama)


def test_retrieval_heads_get_more_at_the_same_total(tiny_llama, smol):
    """retrieval: the named retrieval head keeps boost x k of the inner method's best tokens, the other heads share
    what is left of the uniform total; calibration (razor's) runs when no heads are given."""
    picked: dict[str, dict[int, torch.Tensor]] = {}

    def recording(comp, key):
        orig = comp.prune_layer

        def prune_layer(cache, layer, idx, mask):
            picked.setdefault(key, {})[layer] = (idx.clone(), None if mask is None else mask.clone())
            orig(cache, layer, idx, mask)

        comp.prune_layer = prune_layer
        return comp

    ids = _ids(T)
    comp = recording(get_compressor("retrieval(boost=1.5):snapkv(window=4)", ratio=0.5, retrieval_heads={0: [1]}), "r")
    assert comp.label == "retrieval(boost=1.5):snapkv(window=4)"
    _, rep = _prefill(tiny_llama, comp, ids)
    assert rep.tokens_kept == {0: [27, 48], 1: [27, 27]} and rep.masks_only  # 48 + 3 x 27 = 4 x 32 + 1
    _prefill(tiny_llama, recording(get_compressor("snapkv(window=4)", budget=48), "s"), ids)
    idx, mask = picked["r"][0]
    boosted = set(idx[0, 1][mask[0, 1]].tolist())
    assert boosted == set(picked["s"][0][0][0, 1].tolist())  # the inner method's top 48 of that head
    cal = get_compressor("retrieval:snapkv", ratio=0.5)
    smol.generate(smol.prompt("What colour are bananas?"), config=GenerationConfig(max_new_tokens=2), compressor=cal)
    n = sum(len(v) for v in cal.retrieval_heads.values())
    total = smol.model.config.num_hidden_layers * smol.model.config.num_key_value_heads
    assert n == round(0.15 * total) and _no_hooks(smol.model)


def test_retrieval_per_layer_holds_exactly_the_budget(tiny_llama, smol):
    """retrieval(per_layer=True): a layer's heads share its retrieval and other budgets evenly, so the cache holds
    the uniform total with nothing hidden (layers of different lengths), and it still decodes, alone and batched."""
    comp = get_compressor("retrieval(boost=1.5, per_layer=True):snapkv(window=4)", ratio=0.5, retrieval_heads={0: [1]})
    assert comp.label == "retrieval(boost=1.5, per_layer=True):snapkv(window=4)"
    cache, rep = _prefill(tiny_llama, comp, _ids(T))
    # k = 32: a retrieval head 48, the others 27 (as without per_layer); layer 0 = round((48 + 27) / 2) = 38
    assert rep.tokens_kept == {0: [38, 38], 1: [27, 27]} and rep.cache_len == {0: 38, 1: 27} and not rep.masks_only
    assert 2 * rep.kv_bytes_after == kvcache.bytes_per_token(cache) * (38 + 27)
    assert kvcache.kv_bytes(cache) == rep.kv_bytes_after + kvcache.bytes_per_token(cache) * Q
    _decodes_alone_and_batched(tiny_llama, smol.tokenizer, comp)
    with pytest.raises(ConfigError, match="per_layer must be True or False, got 'yes'"):
        get_compressor("retrieval(per_layer='yes'):snapkv")


def test_retrieval_heads_from_a_score_file(tiny_llama, tmp_path):
    """scores=PATH (bench/kv_heads.py's JSON) picks the top_frac best heads of the file; a missing file or one of
    another model's shape is a ConfigError that quotes the path."""
    import json

    f = tmp_path / "heads.json"
    f.write_text(json.dumps({"scores": [[0.1, 0.2], [0.9, 0.3]]}))
    comp = get_compressor(f"retrieval(scores={str(f)!r}, top_frac=0.25, boost=1.5):snapkv(window=4)", ratio=0.5)
    _, rep = _prefill(tiny_llama, comp, _ids(T))
    assert comp.retrieval_heads == {1: [0]} and rep.tokens_kept == {0: [27, 27], 1: [48, 27]}
    assert comp.label.startswith("retrieval(top_frac=0.25, boost=1.5, scores=")  # files tell variants apart
    f.write_text(json.dumps({"scores": [[0.1, 0.2, 0.3]]}))
    with pytest.raises(ConfigError, match=r"scores \(1, 3\).*has \(2, 2\)"):
        _prefill(tiny_llama, get_compressor(f"retrieval(scores={str(f)!r}):snapkv", ratio=0.5), _ids(T))
    with pytest.raises(ConfigError, match="no head-score file at '/nowhere.json'"):
        _prefill(tiny_llama, get_compressor("retrieval(scores='/nowhere.json'):snapkv", ratio=0.5), _ids(T))
    assert _no_hooks(tiny_llama)


def test_options_in_names_and_labels():
    c = get_compressor("chunk(chunk_size=20):snapkv(window=64, kernel_size=7)", ratio=0.5)
    assert (c.chunk_size, c.inner.window, c.inner.kernel_size, c.ratio) == (20, 64, 7, 0.5)
    assert c.label == "chunk(chunk_size=20):snapkv(window=64, kernel_size=7)"
    assert get_compressor(c.label).label == c.label  # a label builds the same compressor again
    assert get_compressor("snapkv(window=32)").label == "snapkv"  # defaults are not repeated
    with pytest.raises(ConfigError, match="bad option 'window' in KV compressor 'snapkv\\(window\\)'"):
        get_compressor("snapkv(window)")
    with pytest.raises(ConfigError, match="unknown KV compressor 'snapkv\\(window=3'"):
        get_compressor("snapkv(window=3")
    from compress.kv import split_top

    assert split_top("chunk(a=1,b=2):snapkv,h2o", ",") == ["chunk(a=1,b=2):snapkv", "h2o"]


# ---- parameters ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kw", "quoted"),
    [
        ("snapkv", {"ratio": 1.5}, "1.5"),
        ("knorm", {"ratio": -0.1}, "-0.1"),
        ("tova", {"budget": 0}, "budget must be a positive number of tokens per head, got 0"),
        ("h2o", {"window": -3}, "-3"),
        ("snapkv", {"kernel_size": 4}, "4"),
        ("a2sf", {"forgetting": 1.2}, "1.2"),
        ("adaptive", {"safeguard": 2.0}, "2.0"),
        ("pyramid", {"beta": 0.5}, "got 0.5"),
        ("retrieval", {"boost": 0.9}, "got 0.9"),
        ("razor", {"top_frac": 7}, "7"),
        ("random", {"seed": "x"}, "'x'"),
        ("streaming_llm", {"n_sink": -1}, "-1"),
        ("snapkv", {"nope": 1}, "nope"),
    ],
)
def test_bad_params(name, kw, quoted):
    with pytest.raises(ConfigError, match=quoted.replace("(", r"\(").replace(".", r"\.")):
        get_compressor(name, **kw)


def test_bad_names():
    with pytest.raises(ConfigError, match="'quokka'.*options: streaming_llm, snapkv"):
        get_compressor("quokka")
    with pytest.raises(ConfigError, match="attention-based.*options:"):
        get_compressor("caote:knorm")
    with pytest.raises(ConfigError, match="'knorm' takes no inner"):
        get_compressor("knorm:snapkv")
    with pytest.raises(ConfigError, match="non-adaptive"):
        get_compressor("adaptive:adaptive")
    assert get_compressor("adaptive:h2o", ratio=0.25).label == "adaptive:h2o"


def test_razor_calibration_finds_induction_heads(smol):
    comp = get_compressor("razor", top_frac=0.05)
    heads = comp.calibrate(smol.model, smol.tokenizer)
    n = sum(len(v) for v in heads.values())
    total = smol.model.config.num_hidden_layers * smol.model.config.num_key_value_heads
    assert n == round(0.05 * total) and n > 0
    assert comp.head_scores.shape == (smol.model.config.num_hidden_layers, smol.model.config.num_key_value_heads)
    picked = [comp.head_scores[layer, h] for layer, hs in heads.items() for h in hs]
    assert min(picked) >= comp.head_scores.median()


# ---- ragcore eval kv ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fmt", "compressor"),
    [("tests/data/kv_small.jsonl.gz", "kv", "snapkv"), ("tests/data/nq_small.jsonl.gz", "nq", "none")],
)
def test_cli_eval_kv(tmp_path, monkeypatch, data, fmt, compressor):
    import json

    from ragcore.cli import main

    monkeypatch.setattr("eval.runner.cache_dir", lambda: tmp_path / "cache")
    out = tmp_path / "kv.json"
    args = ["eval", "kv", "--data", data, "--compressor", compressor, "--ratio", "0.5", "--model", "smollm2-135m"]
    args += ["--limit", "2", "--k", "2", "--max-tokens", "320", "--max-new-tokens", "6", "--out", str(out)]
    assert main([*args, "--device", "cpu"]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 2 and res["format"] == fmt and res["model"] == "smollm2-135m"
    assert {"accuracy", "accuracy_ci95", "kv_bytes", "kv_bytes_full", "prefill_s", "decode_tok_s"} <= set(res)
    assert 0 <= res["accuracy"] <= 1 and res["prefill_s"] > 0
    assert res["mean_prompt_tokens"] <= 320 - 6
    if compressor == "none":
        assert res["kv_bytes"] == res["kv_bytes_full"] and res["ratio"] == 0.0
    else:
        assert res["kv_bytes"] < 0.8 * res["kv_bytes_full"] and res["compressor"] == compressor
    assert main([*args[:-1], str(tmp_path / "kv2.json"), "--device", "cpu", "--batch-size", "2"]) == 0
    batched = json.loads((tmp_path / "kv2.json").read_text())
    assert batched["predictions"] == res["predictions"] and batched["batch_size"] == 2


def test_cli_eval_kv_errors(tmp_path, capsys):
    from ragcore.cli import main

    base = ["eval", "kv", "--data", "tests/data/kv_small.jsonl.gz", "--model", "smollm2-135m", "--limit", "1"]
    # user errors exit 1 (issue 12: 2 is for usage errors)
    assert main([*base, "--compressor", "quokka"]) == 1
    assert "'quokka'" in capsys.readouterr().err
    assert main([*base, "--compressor", "snapkv", "--ratio", "1.5"]) == 1
    assert "1.5" in capsys.readouterr().err
    assert main([*base, "--compressor", "snapkv", "--batch-size", "0"]) == 1
    assert "batch size must be a positive integer, got 0" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\n')
    assert main([*base[:2], "--data", str(bad), "--model", "smollm2-135m"]) == 1
    assert "unknown row format" in capsys.readouterr().err
    assert main([*base, "--max-tokens", "60"]) == 1
    assert "--max-tokens" in capsys.readouterr().err


def test_load_items_offset(smol):
    from eval.kv import load_items

    data = "tests/data/kv_small.jsonl.gz"
    _, every = load_items(smol, data, max_tokens=320, max_new_tokens=6, progress=False)
    _, tail = load_items(smol, data, limit=1, offset=1, max_tokens=320, max_new_tokens=6, progress=False)
    assert len(every) == 3 and [x.id for x in tail] == [every[1].id]
    assert tail[0].answers == every[1].answers
    with pytest.raises(ConfigError, match="--offset 3 skips all 3 items"):
        load_items(smol, data, offset=3, max_tokens=320, max_new_tokens=6, progress=False)
    with pytest.raises(ConfigError, match="--offset must be a non-negative integer, got -1"):
        load_items(smol, data, offset=-1, progress=False)


def test_label_leaves_out_calibrated_state():
    comp = get_compressor("razor(top_frac=0.2)", ratio=0.5, retrieval_heads={0: [1]})
    assert comp.label == "razor(top_frac=0.2)"


def test_passages_rank_whole_parts_first():
    """Every token of a better part (passage or the stretch between passages) outranks every token of a worse one;
    inside a part the inner scores decide; without the prompt's parts the inner order stands."""

    class Fixed(KVCompressor):
        def score(self, module, hidden, keys, values, position_embeddings, key_offset=0):
            return torch.tensor([[[5.0, 0, 1, 1, 1, 0, 3, 0, 0, 0, 2, 1], [5.0, 0, 1, 1, 1, 0, 3, 0, 0, 0, 2, 1]]])

    class FakePrompt:
        def passage_spans(self):
            return [(2, 5), (5, 10)]  # parts: [0, 2) [2, 5) [5, 10) [10, 12)

    comp = get_compressor("passages", inner=Fixed())
    assert torch.equal(comp.score(None, None, None, None, None), Fixed().score(None, None, None, None, None))
    comp.for_prompt(FakePrompt())
    s = comp.score(None, None, None, None, None)
    assert s.shape == (1, 2, 12) and torch.equal(s[0, 0], s[0, 1])
    idx, _ = KVCompressor.select(None, s, 5)
    # part means: [0,2) 2.5, [2,5) 1.0, [5,10) 0.6, [10,12) 1.5 -> [0,2) and [10,12) whole, then [2,5)'s best token
    assert sorted(idx[0, 0].tolist()[:4]) == [0, 1, 10, 11] and idx[0, 0, 4] in (2, 3, 4)
    assert s[0, 0, 6] < s[0, 0, 2]  # position 6 scores 3, but its part ranks below [2, 5)

    class QuietQuestion(KVCompressor):  # the stretch after the last passage gets no attention at all
        def score(self, module, hidden, keys, values, position_embeddings, key_offset=0):
            return torch.tensor([[[5.0, 0, 1, 1, 1, 0, 3, 0, 0, 0, 0, 0]]])

    for rest_first in (False, True):
        c = get_compressor(f"passages(rest_first={rest_first})", inner=QuietQuestion())
        c.for_prompt(FakePrompt())
        r = c.score(None, None, None, None, None)[0, 0]
        assert (r[[10, 11]].min() > r[2:10].max()) == rest_first  # the question stretch above every passage
        assert r[6] < r[2]  # passages keep their order among themselves


def test_passages_keep_whole_passages_in_generation(smol, chunks):
    """Through Generator, passages:snapkv keeps whole prompt parts: at most two are cut (the one the budget ends
    in, and the last, where the protected window sits); token-level snapkv cuts most of them."""
    prompt = smol.prompt("What colour are bananas?", chunks[:4])
    spans = prompt.passage_spans()
    starts = sorted({0, *(a for a, _ in spans), *(b for _, b in spans), len(prompt)})
    cut = {}
    for name in ("passages:snapkv", "snapkv"):
        comp = get_compressor(name, ratio=0.5)
        kept = {}
        orig = comp.prune_layer

        def prune_layer(cache, layer, idx, mask, orig=orig, kept=kept):
            kept[layer] = set(idx[0, 0].tolist())
            orig(cache, layer, idx, mask)

        comp.prune_layer = prune_layer
        smol.generate(prompt, config=GenerationConfig(max_new_tokens=2), compressor=comp, query_aware=True)
        parts = list(zip(starts, starts[1:]))
        cut[name] = max(sum(0 < len(kept[ly] & set(range(a, b))) < b - a for a, b in parts) for ly in kept)
    assert cut["passages:snapkv"] <= 2 < cut["snapkv"], cut


def test_snapkv_group_max_takes_the_loudest_query_head(tiny_llama):
    """snapkv(group='max'): per key/value head, the largest window-mean vote of its query heads (then pooled),
    never below the group mean's score; 'mean' is the default and other values are refused."""
    got: dict[str, list[torch.Tensor]] = {}
    for group in ("mean", "max"):
        comp = get_compressor(f"snapkv(window=4, group={group!r})", ratio=0.5)
        calls = got.setdefault(group, [])  # layer 0: its window attention, then its scores; then layer 1's
        for method in ("attention", "score"):
            f = getattr(comp, method)
            setattr(comp, method, lambda *x, _f=f, _c=calls, **y: _c.append(_f(*x, **y)) or _c[-1])
        _prefill(tiny_llama, comp, _ids(T))
    (a_mean, s_mean), (a_max, s_max) = got["mean"][:2], got["max"][:2]
    assert torch.equal(a_mean, a_max)  # the same first layer, the same window attention
    votes = a_max.mean(2)  # (B, H=4, T), two query heads per key/value head
    assert torch.allclose(s_max, pool1d(votes.view(1, 2, 2, -1).amax(2), 5))
    assert torch.allclose(s_mean, pool1d(votes.view(1, 2, 2, -1).mean(2), 5))
    assert (s_max >= s_mean - 1e-7).all() and not torch.allclose(s_max, s_mean)
    assert get_compressor("snapkv(group='max')").label == "snapkv(group='max')"
    with pytest.raises(ConfigError, match="group must be 'mean' or 'max'.*'median'"):
        get_compressor("snapkv(group='median')")
