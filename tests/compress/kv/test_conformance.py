"""The KV compressor conformance suite: every registered method passes it, and none is named here.

Each method declares its own budget rule (``budget_rule``); the suite checks the cache against it on both tiny
architectures, on prompts from 1 token to longer than every window, and checks what every compressor owes the
generator: hooks removed, ratio 0 changes nothing, batched decoding equals one by one, labels rebuild the method.
"""

from __future__ import annotations

import re
from dataclasses import fields

import pytest
import torch

from compress.kv import KV_COMPRESSORS, get_compressor
from ragcore import cache as kvcache
from ragcore.errors import ConfigError
from ragcore.generator import GenerationConfig
from tests.compress.kv.helpers import prefill
from tests.helpers import Q, T, hooks_left, random_ids, random_prompt, tiny_generator

NAMES = KV_COMPRESSORS.names()
LENGTHS = [1, 2, 3, 5, 17, 40, 97, 150]  # 150: longer than every method's window (h2o, snapkv 32; EA 128)


def check_budget(model, comp, call, cache, t: int, q: int) -> None:
    """The cache holds what ``comp.budget_rule`` promises for a ``t``-token prompt."""
    n_layers, n_kv = model.config.num_hidden_layers, model.config.num_key_value_heads
    rule = comp.budget_rule(t, n_layers, n_kv)
    rep = call.report
    kept = rep.tokens_kept
    if t <= 1:  # a one-token prompt is a decoding step: nothing to compress
        assert kept == {} and kvcache.seq_len(cache) == t + q
        return
    assert set(kept) == set(range(n_layers)) and rule.min_per_head >= 1
    assert min(min(v) for v in kept.values()) >= rule.min_per_head, (kept, rule)
    assert max(max(v) for v in kept.values()) <= t
    if rule.total is not None:
        assert abs(sum(sum(v) for v in kept.values()) - rule.total) <= rule.slack, (kept, rule)
    for layer in range(n_layers):
        keys, values = kvcache.get_kv(cache, layer)
        assert keys.shape[:2] == values.shape[:2] == (1, n_kv)
        assert keys.shape[2] - q == rep.cache_len[layer] == max(kept[layer])  # physical = the largest budget
    per_token_layer = kvcache.bytes_per_token(cache) // n_layers
    assert rep.kv_bytes_before == per_token_layer * t * n_layers
    assert rep.kv_bytes_after == per_token_layer * sum(rep.cache_len.values())
    if not rep.masks_only:
        assert all(len(set(v)) == 1 for v in kept.values())  # nothing hidden: every head sees its whole layer
    assert kvcache.kv_bytes(cache) == rep.kv_bytes_after + kvcache.bytes_per_token(cache) * q


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spec", [{"ratio": 0.5}, {"budget": 20}], ids=["ratio", "budget"])
def test_keeps_its_budget(tiny, name, spec):
    comp = get_compressor(name, **spec)
    cache, call = prefill(tiny, comp, random_ids(T))
    check_budget(tiny, comp, call, cache, T, Q)
    assert hooks_left(tiny) == 0


@pytest.mark.parametrize("name", NAMES)
def test_any_prompt_length(tiny_llama, name):
    """Every head keeps at least the method's documented minimum (and at least one token) on any prompt length."""
    for t in LENGTHS:
        for ratio in (0.5, 0.9):
            comp = get_compressor(name, ratio=ratio)
            cache, call = prefill(tiny_llama, comp, random_ids(t, seed=t), question=False)
            check_budget(tiny_llama, comp, call, cache, t, 0)


@pytest.mark.parametrize("name", NAMES)
def test_hooks_removed_on_error(tiny_llama, name):
    with pytest.raises(RuntimeError, match="boom"), get_compressor(name, ratio=0.5).apply(tiny_llama):
        assert hooks_left(tiny_llama) > 0
        raise RuntimeError("boom")
    assert hooks_left(tiny_llama) == 0


@pytest.mark.parametrize("name", NAMES)
def test_generation(tiny, smol, name):
    """Ratio 0 generates exactly what no compressor does; at ratio 0.5 the cache is smaller (or masked), only the
    context is compressed unless query-aware, and batched decoding gives the same tokens as one by one."""
    g = tiny_generator(tiny, smol.tokenizer)
    p = random_prompt()
    cfg = GenerationConfig(max_new_tokens=6)
    ref = g.generate(p, config=cfg)
    got = g.generate(p, config=cfg, compressor=get_compressor(name, ratio=0.0))
    assert got.token_ids == ref.token_ids
    assert got.stats["kv_bytes"] == got.stats["kv_bytes_full"] == ref.stats["kv_bytes"]
    comp = get_compressor(name, ratio=0.5)
    half = g.generate(p, config=cfg, compressor=comp)
    assert len(half.token_ids) == 6 and hooks_left(tiny) == 0
    assert half.stats["kv_bytes"] < half.stats["kv_bytes_full"] or half.stats["masks_only"]
    assert half.stats["kv_report"]["tokens_before"] == {0: T, 1: T}  # only the context was compressed
    aware = g.generate(p, config=cfg, compressor=comp, query_aware=True)
    assert aware.stats["kv_report"]["tokens_before"] == {0: T + Q, 1: T + Q}
    prompts = [random_prompt(t) for t in (T, T - 9, T + 5)]
    one = [g.generate(x, config=cfg, compressor=comp).token_ids for x in prompts]
    many = g.generate_batch(prompts, config=cfg, compressor=comp)
    assert [x.token_ids for x in many] == one and hooks_left(tiny) == 0


@pytest.mark.parametrize("name", NAMES)
def test_label_rebuilds_it(name):
    comp = get_compressor(name, ratio=0.25)
    again = get_compressor(comp.label, ratio=0.25)
    assert type(again) is type(comp) and again.label == comp.label and again == comp
    assert comp.label.split("(")[0].split(":")[0] == name


@pytest.mark.parametrize("name", NAMES)
def test_refuses_bad_values_by_name(name):
    for key, value in (("ratio", 1.5), ("ratio", -0.1), ("ratio", "half"), ("budget", 0), ("n_sink", -1)):
        with pytest.raises(ConfigError, match=f"{key} must be .*got {re.escape(repr(value))}"):
            get_compressor(name, **{key: value})
    with pytest.raises(ConfigError, match="unknown option 'nope'.*options: ratio, budget"):
        get_compressor(name, nope=1)


def test_every_method_has_a_docstring_with_its_parameters():
    for name, cls in KV_COMPRESSORS.classes().items():
        doc = cls.__doc__ or ""
        assert "Parameters" in doc and any(src in doc for src in ("arxiv.org", "kvpress", "ragcore's own")), name
        own = [f.name for f in fields(cls) if f.name not in ("ratio", "budget", "n_sink", "protect_last")]
        for field in own:
            assert field in doc, (name, field)


def test_score_shapes_are_checked(tiny_llama):
    from dataclasses import dataclass

    from compress.kv import KVCompressor

    @dataclass
    class Wrong(KVCompressor):
        def score(self, x):
            return torch.zeros(1, 1, 3)

    with pytest.raises(RuntimeError, match=r"score returned \(1, 1, 3\), expected \(1, 2, 64\)"):
        prefill(tiny_llama, Wrong(ratio=0.5), random_ids(T))
    assert hooks_left(tiny_llama) == 0
