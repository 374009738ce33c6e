"""What each method does beyond the conformance suite: its own selection rule, on tiny models and SmolLM2."""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from compress.kv import KVCompressor, get_compressor
from compress.kv.heads import HeadScores, copy_scores
from compress.kv.snapkv import pool1d
from ragcore import cache as kvcache
from ragcore.errors import ConfigError
from ragcore.generator import GenerationConfig
from tests.compress.kv.helpers import prefill, recording
from tests.helpers import PASSAGES, QUESTION, T, hooks_left, random_ids, random_prompt, tiny_generator


def fixed(rows):
    """A compressor whose scores are ``rows`` (H_kv lists of T floats), whatever the layer."""

    @dataclass
    class Fixed(KVCompressor):
        def score(self, x):
            return torch.tensor([rows])

    return Fixed()


def bare(prompt=None):
    """The least a wrapper's ``score`` reads of a layer: the call's prompt."""
    return SimpleNamespace(call=SimpleNamespace(prompt=prompt))


def decodes_alone_and_batched(model, tokenizer, comp) -> None:
    """Two prompts of different lengths decode under ``comp`` with a smaller cache, alone and batched alike."""
    g = tiny_generator(model, tokenizer)
    prompts = [random_prompt(t) for t in (T, T - 9)]
    cfg = GenerationConfig(max_new_tokens=6)
    one = [g.generate(p, config=cfg, compressor=comp) for p in prompts]
    assert one[0].stats["kv_bytes"] < one[0].stats["kv_bytes_full"]
    many = g.generate_batch(prompts, config=cfg, compressor=comp)
    assert [x.token_ids for x in many] == [x.token_ids for x in one] and hooks_left(model) == 0


def test_chunk_scores_whole_chunks_shared_by_heads():
    inner = fixed([[0.0, 9, 0, 0, 1, 1, 1, 1, 5, 0], [0, 0, 0, 0, 2, 2, 2, 2, 0, 0]])
    s = get_compressor("chunk", inner=inner, chunk_size=4).score(bare())
    assert s.shape == (1, 2, 10) and torch.equal(s[0, 0], s[0, 1])  # one choice for every head
    assert len(set(s[0, 0, :4].tolist())) == len(set(s[0, 0, 4:8].tolist())) == len(set(s[0, 0, 8:].tolist())) == 1
    assert s[0, 0, 4] > s[0, 0, 8] > s[0, 0, 0]  # chunk [4, 8) has the most mass per token over both heads
    idx, _ = inner.select(s, 4)
    assert sorted(idx[0, 0].tolist()) == [4, 5, 6, 7]


def test_layers_share_one_selection(tiny_llama):
    """layers:snapkv keeps the same positions in every layer and head, chosen from all layers' votes; plain snapkv
    on the same prompt picks differently per layer (so the equality below is the wrapper's doing)."""
    shared, own = {}, {}
    comp = recording(get_compressor("layers:snapkv(window=4)", ratio=0.5), shared)
    assert comp.label == "layers:snapkv(window=4)"
    _, call = prefill(tiny_llama, comp, random_ids(T))
    prefill(tiny_llama, recording(get_compressor("snapkv(window=4)", ratio=0.5), own), random_ids(T))
    a, b = shared[0][0], shared[1][0]
    assert a.shape == (1, 2, 32) and torch.equal(a, b) and torch.equal(a[:, 0], a[:, 1])
    assert set(range(T - 4, T)) <= set(a[0, 0].tolist())  # the inner method's window stays protected
    assert not torch.equal(own[0][0], own[1][0]) or not torch.equal(own[0][0][:, 0], own[0][0][:, 1])
    assert call.report.tokens_kept == {0: [32, 32], 1: [32, 32]} and not call.report.masks_only


def test_pyramid_budgets_fall_with_depth(tiny_llama, smol):
    """pyramid:snapkv keeps more in the first layer than in the last, the inner window protected in both, with the
    uniform mean budget; each layer keeps what snapkv with that layer's budget keeps; caches of unequal lengths
    per layer still decode, alone and in a batch."""
    picked = {}
    comp = recording(get_compressor("pyramid:snapkv(window=4)", ratio=0.5), picked)
    cache, call = prefill(tiny_llama, comp, random_ids(T))
    rep = call.report
    # mean budget 32 = 4 protected + 28 shared out as 28 * (2 - 1/20) = 55 and 28 / 20 = 1
    assert rep.tokens_kept == {0: [59, 59], 1: [5, 5]} and rep.cache_len == {0: 59, 1: 5}
    assert rep.kv_bytes_after == kvcache.bytes_per_token(cache) * 32 and not rep.masks_only
    for layer, k in ((0, 59), (1, 5)):
        ref = {}
        prefill(tiny_llama, recording(get_compressor("snapkv(window=4)", budget=k), ref), random_ids(T))
        got = picked[layer][0]
        assert torch.equal(got.sort(-1).values, ref[layer][0].sort(-1).values)
        assert set(range(T - 4, T)) <= set(got[0, 0].tolist())
    decodes_alone_and_batched(tiny_llama, smol.tokenizer, comp)


def test_global_budget_moves_to_the_dispersed_layer(tiny_llama, smol):
    """global: one pool of L x H_kv x k entries: a layer whose scores are spread out takes budget from a layer whose
    scores sit on a few tokens; every head keeps its safeguard; the caches (unequal per layer) still decode."""

    @dataclass
    class ByLayer(KVCompressor):
        def score(self, x):
            g = torch.Generator().manual_seed(x.layer)
            s = torch.rand(1, x.keys.shape[1], x.keys.shape[-2], generator=g)
            return s**8 if x.layer == 0 else 1 + s  # layer 0: mass on a few tokens; layer 1: spread

    comp = get_compressor("global", inner=ByLayer(), ratio=0.5)
    _, call = prefill(tiny_llama, comp, random_ids(T))
    kept = call.report.tokens_kept
    assert sum(kept[0]) + sum(kept[1]) == 32 * 2 * 2 and sum(kept[1]) > sum(kept[0]) + 20
    assert min(kept[0] + kept[1]) >= int(0.2 * 32) and call.report.masks_only
    assert call.report.cache_len == {0: max(kept[0]), 1: max(kept[1])}
    decodes_alone_and_batched(tiny_llama, smol.tokenizer, comp)


def test_adaptive_floor_on_a_short_prompt(smol):
    """Field report: adaptive:snapkv at ratio 0.9 on a 97-token prompt left heads with 0 tokens in every layer.
    Every head keeps its floor, max(1, safeguard x k), whatever the protected window (here larger than k)."""
    ids = smol.tokenizer("word " * 200, return_tensors="pt").input_ids[:, :97]
    for spec in ("adaptive:snapkv", "adaptive(safeguard=0.0):snapkv", "global:snapkv", "adaptive:h2o"):
        comp = get_compressor(spec, ratio=0.9)
        _, call = prefill(smol.model, comp, ids, question=False)
        k = 97 - int(0.9 * 97)
        floor = comp.floor(k)
        assert floor >= 1
        kept = call.report.tokens_kept
        assert min(min(v) for v in kept.values()) >= floor, (spec, kept)
        assert all(sum(v) == k * len(v) for v in kept.values()) or spec.startswith("global")


def test_retrieval_heads_get_more_at_the_same_total(tiny_llama, smol):
    """retrieval_heads: the named retrieval head keeps boost x k of the inner method's best tokens, the other heads
    share what is left of the uniform total; calibration runs when no heads are given."""
    picked, ref = {}, {}
    spec = "retrieval_heads(boost=1.5):snapkv(window=4)"
    comp = recording(get_compressor(spec, ratio=0.5, retrieval_heads={0: [1]}), picked)
    assert comp.label == spec
    _, call = prefill(tiny_llama, comp, random_ids(T))
    assert call.report.tokens_kept == {0: [27, 48], 1: [27, 27]} and call.report.masks_only  # 48 + 3 x 27 = 129
    prefill(tiny_llama, recording(get_compressor("snapkv(window=4)", budget=48), ref), random_ids(T))
    idx, mask = picked[0]
    assert set(idx[0, 1][mask[0, 1]].tolist()) == set(ref[0][0][0, 1].tolist())  # the inner method's top 48
    cal = get_compressor("retrieval_heads:snapkv", ratio=0.5)
    smol.generate(smol.prompt("What colour are bananas?"), config=GenerationConfig(max_new_tokens=2), compressor=cal)
    n = sum(len(v) for v in cal.retrieval_heads.values())
    total = smol.model.config.num_hidden_layers * smol.model.config.num_key_value_heads
    assert n == round(0.15 * total) and hooks_left(smol.model) == 0


def test_retrieval_heads_old_name_still_parses():
    with pytest.warns(DeprecationWarning, match="'retrieval' is now called 'retrieval_heads'"):
        comp = get_compressor("retrieval(boost=2.5):snapkv(window=16)", ratio=0.75)
    assert comp.label == "retrieval_heads(boost=2.5):snapkv(window=16)"


def test_retrieval_heads_per_layer_holds_exactly_the_budget(tiny_llama, smol):
    """per_layer=True: a layer's heads share its retrieval and other budgets evenly, so the cache holds the uniform
    total with nothing hidden (layers of different lengths), and it still decodes, alone and batched."""
    spec = "retrieval_heads(boost=1.5, per_layer=True):snapkv(window=4)"
    comp = get_compressor(spec, ratio=0.5, retrieval_heads={0: [1]})
    assert comp.label == spec
    cache, call = prefill(tiny_llama, comp, random_ids(T))
    rep = call.report
    # k = 32: a retrieval head 48, the others 27 (as without per_layer); layer 0 = round((48 + 27) / 2) = 38
    assert rep.tokens_kept == {0: [38, 38], 1: [27, 27]} and rep.cache_len == {0: 38, 1: 27} and not rep.masks_only
    assert 2 * rep.kv_bytes_after == kvcache.bytes_per_token(cache) * (38 + 27)
    decodes_alone_and_batched(tiny_llama, smol.tokenizer, comp)
    with pytest.raises(ConfigError, match="per_layer must be True or False, got 'yes'"):
        get_compressor("retrieval_heads(per_layer='yes'):snapkv")


def test_retrieval_heads_from_a_score_file(tiny_llama, tmp_path):
    """scores=PATH picks the top_frac best heads of the file (the current format and the unnamed one written before
    it); a missing file, another model's shape or another format is a ConfigError that quotes the path."""
    f = tmp_path / "heads.json"
    for data in (
        {"scores": [[0.1, 0.2], [0.9, 0.3]]},
        {"format": "ragcore-head-scores", "version": 1, "scores": [[0.1, 0.2], [0.9, 0.3]]},
    ):
        f.write_text(json.dumps(data))
        spec = f"retrieval_heads(scores={str(f)!r}, top_frac=0.25, boost=1.5):snapkv(window=4)"
        comp = get_compressor(spec, ratio=0.5)
        _, call = prefill(tiny_llama, comp, random_ids(T))
        assert comp.retrieval_heads == {1: [0]} and call.report.tokens_kept == {0: [27, 27], 1: [48, 27]}
        assert comp.label.startswith("retrieval_heads(top_frac=0.25, boost=1.5, scores=")
    f.write_text(json.dumps({"scores": [[0.1, 0.2, 0.3]]}))
    with pytest.raises(ConfigError, match=r"scores \(1, 3\).*has \(2, 2\)"):
        prefill(tiny_llama, get_compressor(f"retrieval_heads(scores={str(f)!r}):snapkv", ratio=0.5), random_ids(T))
    f.write_text(json.dumps({"format": "something-else", "scores": [[1, 2], [3, 4]]}))
    with pytest.raises(ConfigError, match="is not a head-score file"):
        prefill(tiny_llama, get_compressor(f"retrieval_heads(scores={str(f)!r}):snapkv", ratio=0.5), random_ids(T))
    with pytest.raises(ConfigError, match="no head-score file at '/nowhere.json'"):
        prefill(tiny_llama, get_compressor("retrieval_heads(scores='/nowhere.json'):snapkv", ratio=0.5), random_ids(T))
    assert hooks_left(tiny_llama) == 0


def test_head_scores_round_trip_and_top(tmp_path):
    hs = HeadScores(torch.tensor([[0.1, 0.5], [0.9, 0.3], [0.2, 0.8]]), "m", {"rows": 3})
    path = hs.save(tmp_path / "h.json")
    back = HeadScores.load(path, (3, 2))
    assert torch.allclose(back.scores, hs.scores) and back.model == "m" and back.meta == {"rows": 3}
    assert back.top(0.5) == {1: [0], 2: [1], 0: [1]} or back.top(0.5) == {0: [1], 1: [0], 2: [1]}
    assert HeadScores.load(path).top(0.0) == {}


def test_copy_scores_find_the_heads_that_copy(smol):
    """Wu et al.'s copy score on SmolLM2: answers it got right count; every score is a mass in [0, 1]."""
    prompts = [smol.prompt(QUESTION, PASSAGES), smol.prompt("What colour are bananas?", PASSAGES)]
    hs = copy_scores(smol, prompts, lambda i, g: ("1889", "yellow")[i] in g.text.lower(), max_new_tokens=8)
    n_layers, n_kv = smol.model.config.num_hidden_layers, smol.model.config.num_key_value_heads
    assert hs.scores.shape == (n_layers, n_kv) and hs.meta["answered_right"] >= 1 and hs.meta["rows"] >= 1
    assert float(hs.scores.min()) >= 0 and float(hs.scores.max()) <= 1 and float(hs.scores.max()) > 0.1
    with pytest.raises(ConfigError, match="no answer token"):
        copy_scores(smol, prompts, lambda i, g: False)


def test_options_in_names_and_labels():
    c = get_compressor("chunk(chunk_size=20):snapkv(window=64, kernel_size=7)", ratio=0.5)
    assert (c.chunk_size, c.inner.window, c.inner.kernel_size, c.ratio) == (20, 64, 7, 0.5)
    assert c.label == "chunk(chunk_size=20):snapkv(window=64, kernel_size=7)"
    assert get_compressor("snapkv(window=32)").label == "snapkv"  # defaults are not repeated
    assert get_compressor("razor(top_frac=0.2)", ratio=0.5, retrieval_heads={0: [1]}).label == "razor(top_frac=0.2)"
    with pytest.raises(ConfigError, match="attention-based.*options:"):
        get_compressor("caote:knorm")
    with pytest.raises(ConfigError, match="non-adaptive"):
        get_compressor("adaptive:adaptive")
    assert get_compressor("adaptive:h2o", ratio=0.25).label == "adaptive:h2o"


def test_passages_rank_whole_parts_first():
    """Every token of a better part (passage or the stretch between passages) outranks every token of a worse one;
    inside a part the inner scores decide; without the prompt's parts the inner order stands."""
    rows = [[5.0, 0, 1, 1, 1, 0, 3, 0, 0, 0, 2, 1], [5.0, 0, 1, 1, 1, 0, 3, 0, 0, 0, 2, 1]]
    prompt = SimpleNamespace(passage_spans=lambda: [(2, 5), (5, 10)])  # parts: [0, 2) [2, 5) [5, 10) [10, 12)
    comp = get_compressor("passages", inner=fixed(rows))
    assert torch.equal(comp.score(bare()), torch.tensor([rows]))
    s = comp.score(bare(prompt))
    assert s.shape == (1, 2, 12) and torch.equal(s[0, 0], s[0, 1])
    idx, _ = comp.select(s, 5)
    # part means: [0,2) 2.5, [2,5) 1.0, [5,10) 0.6, [10,12) 1.5 -> [0,2) and [10,12) whole, then [2,5)'s best token
    assert sorted(idx[0, 0].tolist()[:4]) == [0, 1, 10, 11] and idx[0, 0, 4] in (2, 3, 4)
    assert s[0, 0, 6] < s[0, 0, 2]  # position 6 scores 3, but its part ranks below [2, 5)
    quiet = [[5.0, 0, 1, 1, 1, 0, 3, 0, 0, 0, 0, 0]]  # the stretch after the last passage gets no attention at all
    for rest_first in (False, True):
        r = get_compressor(f"passages(rest_first={rest_first})", inner=fixed(quiet)).score(bare(prompt))[0, 0]
        assert (r[[10, 11]].min() > r[2:10].max()) == rest_first  # the question stretch above every passage
        assert r[6] < r[2]  # passages keep their order among themselves


def test_passages_keep_whole_passages_in_generation(smol, chunks):
    """Through Generator, passages:snapkv keeps whole prompt parts: at most two are cut (the one the budget ends
    in, and the last, where the protected window sits); token-level snapkv cuts most of them."""
    prompt = smol.prompt("What colour are bananas?", chunks[:4])
    spans = prompt.passage_spans()
    starts = sorted({0, *(a for a, _ in spans), *(b for _, b in spans), len(prompt)})
    parts = list(zip(starts, starts[1:]))
    cut = {}
    for name in ("passages:snapkv", "snapkv"):
        picked = {}
        comp = recording(get_compressor(name, ratio=0.5), picked)
        smol.generate(prompt, config=GenerationConfig(max_new_tokens=2), compressor=comp, query_aware=True)
        kept = {ly: set(idx[0, 0].tolist()) for ly, (idx, _) in picked.items()}
        cut[name] = max(sum(0 < len(kept[ly] & set(range(a, b))) < b - a for a, b in parts) for ly in kept)
    assert cut["passages:snapkv"] <= 2 < cut["snapkv"], cut


def test_snapkv_group_max_takes_the_loudest_query_head(tiny_llama):
    """snapkv(group='max'): per key/value head, the largest window-mean vote of its query heads (then pooled),
    never below the group mean's score; 'mean' is the default and other values are refused."""
    seen = {}
    for group in ("mean", "max"):
        comp = get_compressor(f"snapkv(window=4, group={group!r})", ratio=0.5)
        score = comp.score

        def spy(x, _score=score, _group=group):
            out = _score(x)
            seen.setdefault(_group, (x, out))  # layer 0
            return out

        object.__setattr__(comp, "score", spy)
        prefill(tiny_llama, comp, random_ids(T))
    (x, s_mean), (_, s_max) = seen["mean"], seen["max"]
    with torch.inference_mode():
        votes = x.attention(slice(T - 4, T)).mean(2)  # (B, H=4, T), two query heads per key/value head
    assert torch.allclose(s_max, pool1d(votes.view(1, 2, 2, -1).amax(2), 5))
    assert torch.allclose(s_mean, pool1d(votes.view(1, 2, 2, -1).mean(2), 5))
    assert (s_max >= s_mean - 1e-7).all() and not torch.allclose(s_max, s_mean)
    assert get_compressor("snapkv(group='max')").label == "snapkv(group='max')"
    with pytest.raises(ConfigError, match="group must be one of 'mean', 'max', got 'median'"):
        get_compressor("snapkv(group='median')")


def test_razor_calibration_finds_induction_heads(smol):
    comp = get_compressor("razor", top_frac=0.05)
    heads = comp.calibrate(smol.model)
    n = sum(len(v) for v in heads.values())
    total = smol.model.config.num_hidden_layers * smol.model.config.num_key_value_heads
    assert n == round(0.05 * total) and n > 0
    from compress.kv.heads import induction_scores

    scores = induction_scores(smol.model, comp.n_calib_tokens, comp.seed).scores
    assert scores.shape == (smol.model.config.num_hidden_layers, smol.model.config.num_key_value_heads)
    picked = [scores[layer, h] for layer, hs in heads.items() for h in hs]
    assert min(picked) >= scores.median()


def test_expected_attention_projects_queries_through_the_attention_module(tiny_llama):
    """Without the covariance and value norm, Expected Attention is the softmax of the mean recent query, rotated by
    the mean future rotary map, against the keys (averaged over each group's query heads)."""
    from ragcore.attention import project_queries, rotary_embedding, rotate_half

    comp = get_compressor("expected_attention(use_covariance=False, use_value_norm=False, n_recent=8)", ratio=0.5)
    seen = {}
    score = comp.score
    object.__setattr__(comp, "score", lambda x: seen.setdefault("x", (x, score(x)))[1])
    prefill(tiny_llama, comp, random_ids(T))
    x, got = seen["x"]
    with torch.inference_mode():
        ref = _expected(x, tiny_llama, project_queries, rotary_embedding, rotate_half)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def _expected(x, model, project_queries, rotary_embedding, rotate_half):
    q = project_queries(x.module, x.hidden, None, slice(T - 8, T)).float().mean(2)
    cos, sin = rotary_embedding(model, x.hidden[:, :1].float(), torch.arange(T, T + 512)[None])
    c, s = cos[0].mean(0), sin[0].mean(0)
    mu = q * c + rotate_half(q) * s
    k = x.keys.float().repeat_interleave(2, dim=1)
    return torch.softmax(x.module.scaling * torch.einsum("bhd,bhtd->bht", mu, k), -1).view(1, 2, 2, T).mean(2)


@pytest.mark.parametrize(
    "spec",
    [
        "kvzip(safeguard=0.5)",
        "kvzip(plus=True)",
        "kvzip(assistant_turn=True, plus=True)",
        "kvzip(kernel_size=5)",
        "kvzip(keep_system_prompt=True)",
    ],
)
def test_kvzip_options_keep_the_budget(smol, spec):
    """KVzip's options (AdaKV's safeguard, KVzip+ weights, the assistant turn) keep the global budget, and the
    safeguard gives every head at least its share of the uniform budget, on SmolLM2 with its tokenizer."""
    from ragcore.prompt import build_prompt

    prompt = build_prompt(smol.tokenizer, QUESTION, PASSAGES)
    t = prompt.question_start
    comp = get_compressor(spec, ratio=0.7)
    cache = kvcache.new_cache(smol.model.config)
    with torch.inference_mode(), comp.apply(smol.model, cache, prompt) as call:
        kvcache.call(smol.model, cache, input_ids=prompt.input_ids[:, :t], use_cache=True)
    kept = call.report.tokens_kept
    k = comp.n_keep(t)
    n_heads = sum(len(v) for v in kept.values())
    assert sum(sum(v) for v in kept.values()) == n_heads * k
    assert min(min(v) for v in kept.values()) >= comp.floor(k)
    if "safeguard" in spec:
        assert comp.floor(k) == int(0.5 * k) > 1


def test_kvzip_scope_heads_keeps_each_layers_budget_spread_over_its_heads(smol):
    """scope='heads' (kvpress's layerwise=True): every layer keeps H_kv x k pairs, its heads unevenly, each at
    least the safeguard's floor; scope='global' moves pairs between layers."""
    from ragcore.prompt import build_prompt

    prompt = build_prompt(smol.tokenizer, QUESTION, PASSAGES)
    t = prompt.question_start
    kept = {}
    for spec in ("kvzip(scope='heads', safeguard=0.2)", "kvzip(safeguard=0.2)"):
        comp = get_compressor(spec, ratio=0.7)
        cache = kvcache.new_cache(smol.model.config)
        with torch.inference_mode(), comp.apply(smol.model, cache, prompt) as call:
            kvcache.call(smol.model, cache, input_ids=prompt.input_ids[:, :t], use_cache=True)
        kept[spec] = call.report.tokens_kept  # per layer, per head
        k = comp.n_keep(t)
        assert min(min(v) for v in kept[spec].values()) >= comp.floor(k) > 1
    heads, pooled = kept["kvzip(scope='heads', safeguard=0.2)"], kept["kvzip(safeguard=0.2)"]
    n_kv = smol.model.config.num_key_value_heads
    assert {sum(v) for v in heads.values()} == {n_kv * k}
    assert any(len(set(v)) > 1 for v in heads.values())  # the heads of a layer differ
    assert len({sum(v) for v in pooled.values()}) > 1  # global: the layers differ


def test_kvzip_bfloat16_products_keep_nearly_the_same_pairs(smol):
    """score_dtype='bfloat16' runs the reconstruction's linear layers and score product in bfloat16: the kept pairs
    are nearly those of float32, not all of them; 'auto' is one of the two, by the processor."""
    from ragcore.attention import bfloat16_products
    from ragcore.prompt import build_prompt

    prompt = build_prompt(smol.tokenizer, QUESTION, PASSAGES)
    t = prompt.question_start
    kept = {}
    for dtype in ("model", "bfloat16", "auto"):
        picked: dict = {}
        comp = recording(get_compressor("kvzip", ratio=0.5, score_dtype=dtype), picked)
        cache = kvcache.new_cache(smol.model.config)
        with torch.inference_mode(), comp.apply(smol.model, cache, prompt):
            kvcache.call(smol.model, cache, input_ids=prompt.input_ids[:, :t], use_cache=True)
        kept[dtype] = {
            (layer, h, i)
            for layer in sorted(picked)
            for h, (idx, mask) in enumerate(zip(picked[layer][0][0], picked[layer][1][0]))
            for i in idx[mask].tolist()
        }
    same = len(kept["model"] & kept["bfloat16"]) / len(kept["model"])
    assert 0.95 < same < 1.0, same
    assert kept["auto"] == kept["bfloat16" if bfloat16_products("cpu") else "model"]


def test_kvzip_bfloat16_reconstruction_only(smol):
    """In bfloat16 the reconstruction pass's linear layers run under autocast, the prefill's do not: the cache
    keeps float32 pairs, and no autocast is left on."""
    from ragcore.prompt import build_prompt

    prompt = build_prompt(smol.tokenizer, QUESTION, PASSAGES)
    t = prompt.question_start
    proj = smol.model.model.layers[0].mlp.down_proj
    for dtype, want in (("bfloat16", {torch.float32, torch.bfloat16}), ("model", {torch.float32})):
        seen: list = []
        handle = proj.register_forward_hook(lambda _m, _a, out, seen=seen: seen.append((out.shape[1], out.dtype)))
        cache = kvcache.new_cache(smol.model.config)
        try:
            with (
                torch.inference_mode(),
                get_compressor("kvzip", ratio=0.5, score_dtype=dtype).apply(smol.model, cache, prompt),
            ):
                kvcache.call(smol.model, cache, input_ids=prompt.input_ids[:, :t], use_cache=True)
        finally:
            handle.remove()
        assert seen[0] == (t, torch.float32)  # the prefill first, in the model's dtype
        assert {d for _, d in seen} == want, (dtype, seen)
        assert {kvcache.get_kv(cache, layer)[i].dtype for layer in range(2) for i in (0, 1)} == {torch.float32}
        assert not torch.is_autocast_enabled("cpu")
    half = copy.deepcopy(smol.model).half()  # a half-precision model: the bfloat16 product only, no autocast
    cache = kvcache.new_cache(half.config)
    with torch.inference_mode(), get_compressor("kvzip", ratio=0.5, score_dtype="bfloat16").apply(half, cache, prompt):
        kvcache.call(half, cache, input_ids=prompt.input_ids[:, :t], use_cache=True)
    keys = kvcache.get_kv(cache, 0)[0]
    assert keys.dtype == torch.float16 and keys.shape[-2] < t


def test_kvzip_options_change_the_selection(smol):
    """Each option changes which pairs KVzip keeps (a test that could fail if an option were ignored)."""
    from ragcore.prompt import build_prompt

    prompt = build_prompt(smol.tokenizer, QUESTION, PASSAGES)
    t = prompt.question_start
    kept = {}
    for spec in (
        "kvzip",
        "kvzip(plus=True)",
        "kvzip(assistant_turn=True)",
        "kvzip(safeguard=0.5)",
        "kvzip(kernel_size=5)",
    ):  # keep_system_prompt: its own test (this prompt's system part is over half of the budget)
        picked: dict = {}
        comp = recording(get_compressor(spec, ratio=0.7), picked)
        cache = kvcache.new_cache(smol.model.config)
        with torch.inference_mode(), comp.apply(smol.model, cache, prompt):
            kvcache.call(smol.model, cache, input_ids=prompt.input_ids[:, :t], use_cache=True)
        kept[spec] = [sorted(map(tuple, idx[0].tolist())) for idx, _ in (picked[i] for i in sorted(picked))]
    for spec in list(kept)[1:]:
        assert kept[spec] != kept["kvzip"], spec


@pytest.mark.parametrize("spec", ["kvzip", "kvzip(plus=True)"])
def test_kvzip_scores_from_the_layers_own_normalisers_equal_recomputed_ones(smol, spec, monkeypatch):
    """KVzip's reconstruction reads each layer's queries and normalisers from the layer's own attention pass
    (record_row_softmax); its scores are those it computes itself from the layer's input when nothing is recorded
    (a model on another attention implementation)."""
    from compress.kv.kvzip import KVzip
    from ragcore.prompt import build_prompt

    prompt = build_prompt(smol.tokenizer, QUESTION, PASSAGES)
    t = prompt.question_start
    assert smol.model.config._attn_implementation == kvcache.ATTN_IMPLEMENTATION
    scores, reads, now = {}, [], {}
    real = KVzip.reconstruction_scores
    record = kvcache.record_row_softmax

    def keep_scores(self, call, n):
        scores[now["mode"]] = real(self, call, n)
        return scores[now["mode"]]

    def counted(into):
        reads.append(now["mode"])
        return record(into) if now["mode"] == "recorded" else contextlib.nullcontext(into)

    import compress.kv.kvzip as kvzip_module

    given = []  # per max_attention call: whether the layer's own normalisers came with it
    inner = kvzip_module.max_attention

    def spy(*args, softmax=None, **kwargs):
        given.append((now["mode"], softmax is not None))
        return inner(*args, softmax=softmax, **kwargs)

    monkeypatch.setattr(kvzip_module, "max_attention", spy)
    monkeypatch.setattr(KVzip, "reconstruction_scores", keep_scores)
    monkeypatch.setattr(kvcache, "record_row_softmax", counted)
    for mode in ("recorded", "recomputed"):
        now["mode"] = mode
        comp = get_compressor(spec, ratio=0.5, chunk=40, score_dtype="model")  # several chunks, float32 products
        cache = kvcache.new_cache(smol.model.config)
        with torch.inference_mode(), comp.apply(smol.model, cache, prompt):
            kvcache.call(smol.model, cache, input_ids=prompt.input_ids[:, :t], use_cache=True)
    assert reads.count("recorded") == reads.count("recomputed") > 1
    assert {m: {g for mm, g in given if mm == m} for m in ("recorded", "recomputed")} == {
        "recorded": {True},
        "recomputed": {False},
    }
    for got, want in zip(scores["recorded"], scores["recomputed"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_kvzip_keep_system_prompt_keeps_it_everywhere_and_repeats_the_passages_only(smol, caplog):
    """keep_system_prompt: every head of every layer keeps the tokens before the first passage, and the
    reconstruction repeats the prompt from the first passage on (the system prompt is not part of it); a system
    prompt over half of each head's budget is scored like the passages instead, with a warning."""
    from ragcore.prompt import build_prompt
    from ragcore.types import Chunk

    passages = [
        *PASSAGES,
        *(Chunk(f"Filler sentence number {i} about nothing much at all.", f"f{i}") for i in range(6)),
    ]
    prompt = build_prompt(smol.tokenizer, QUESTION, passages)
    t = prompt.question_start
    system = prompt.passage_spans()[0][0]
    assert system > 10 and 2 * system <= get_compressor("kvzip", ratio=0.4).n_keep(t)  # it fits half the budget
    kept = {}
    for spec in ("kvzip", "kvzip(keep_system_prompt=True)"):
        picked: dict = {}
        comp = recording(get_compressor(spec, ratio=0.4), picked)
        cache = kvcache.new_cache(smol.model.config)
        with torch.inference_mode(), comp.apply(smol.model, cache, prompt):
            kvcache.call(smol.model, cache, input_ids=prompt.input_ids[:, :t], use_cache=True)
        kept[spec] = [
            [set(i[m].tolist()) for i, m in zip(idx[0], mask[0])] for idx, mask in (picked[x] for x in sorted(picked))
        ]
        call = SimpleNamespace(prompt=prompt, inputs={"input_ids": prompt.input_ids}, model=smol.model)
        pieces = comp.repeat_ids(call, t)
        start = system if "keep" in spec else 0
        assert torch.equal(
            torch.cat([p[:, -min(comp.chunk, t - start) :] for p in pieces], 1)[0], prompt.input_ids[0, start:t]
        )
    assert all(set(range(system)) <= head for layer in kept["kvzip(keep_system_prompt=True)"] for head in layer)
    assert not all(set(range(system)) <= head for layer in kept["kvzip"] for head in layer)  # the option matters
    bare = get_compressor("kvzip(keep_system_prompt=True)")  # no prompt: nothing kept beyond the sinks
    assert bare.system_end(SimpleNamespace(prompt=None), t) == 0
    # a budget the system prompt would take over half of: scored like the passages, and said so
    tight = get_compressor("kvzip(keep_system_prompt=True)", ratio=0.8)
    assert 2 * system > tight.n_keep(t) and tight.system_end(call, t) == 0
    picked = {}
    cache = kvcache.new_cache(smol.model.config)
    with torch.inference_mode(), recording(tight, picked).apply(smol.model, cache, prompt):
        kvcache.call(smol.model, cache, input_ids=prompt.input_ids[:, :t], use_cache=True)
    assert "keep_system_prompt" in caplog.text and len(picked) == smol.model.config.num_hidden_layers
    heads = [set(i[m].tolist()) for idx, mask in picked.values() for i, m in zip(idx[0], mask[0])]
    assert all(head - set(range(system)) for head in heads)  # every head keeps passage tokens


def test_kvzip_assistant_header_is_the_templates_turn_change(smol):
    from compress.kv.kvzip import assistant_header

    head = assistant_header(smol.tokenizer)
    assert head == "<|im_end|>\n<|im_start|>assistant\n"
    assert assistant_header(SimpleNamespace(chat_template=None)) == ""

    def refuse(*_a, **_k):
        raise RuntimeError("Conversations must start with a system message")

    with pytest.raises(ConfigError, match="refuses a lone user message.*assistant_turn=False"):
        assistant_header(SimpleNamespace(chat_template="x", apply_chat_template=refuse))
    with pytest.raises(ConfigError, match="safeguard=0.3 applies to scope='global' or 'heads'"):
        get_compressor("kvzip(scope='layer', safeguard=0.3)")


def test_kvzip_output_norms_are_the_norm_through_each_query_head(tiny_llama):
    """``output_norms`` equals ||W_O[:, head] v|| computed directly, per query head of each group."""
    from compress.kv.kvzip import output_norms

    attn = tiny_llama.model.layers[0].self_attn
    n_h, n_kv = tiny_llama.config.num_attention_heads, tiny_llama.config.num_key_value_heads
    d = attn.head_dim
    torch.manual_seed(0)
    values = torch.randn(1, n_kv, 7, d)
    got = output_norms(attn, values)
    w = attn.o_proj.weight.float()
    g = n_h // n_kv
    for kv in range(n_kv):
        for j in range(g):
            h = kv * g + j
            want = (values[0, kv] @ w[:, h * d : (h + 1) * d].T).norm(dim=-1)
            torch.testing.assert_close(got[0, kv, j], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_kvzip_kernel_size_max_pools_each_heads_scores(kernel):
    """``kernel_size``: each token's score becomes the largest within ``kernel_size // 2`` tokens either side of it,
    per batch row and head, and the shape stays; an even width (no centre) is refused."""
    s = torch.rand(2, 3, 17)
    out = get_compressor(f"kvzip(kernel_size={kernel})").pool(s)
    assert out.shape == s.shape
    r = kernel // 2
    for i in range(17):
        assert torch.equal(out[..., i], s[..., max(0, i - r) : i + r + 1].amax(-1))
    assert get_compressor("kvzip").pool(s) is s
    with pytest.raises(ConfigError, match="kernel_size must be odd.*got 4"):
        get_compressor("kvzip(kernel_size=4)")


def test_compactor_leverage_is_the_ridge_leverage_of_each_chunk():
    """``leverage_scores``: per chunk, x_i^T (X^T X + ridge I)^-1 x_i of the centred keys, computed here directly
    (a short last chunk among the last ``chunk`` keys); a key far outside the others' span scores highest."""
    from compress.kv.compactor import RIDGE, leverage_scores

    torch.manual_seed(0)
    keys = torch.randn(1, 2, 10, 4)
    keys[0, 1, 3] = torch.tensor([0.0, 0.0, 0.0, 40.0])  # an outlier in head 1
    got = leverage_scores(keys, chunk=6)
    for h in range(2):
        for s, e, start in ((0, 6, 0), (6, 10, 4)):  # the last 4 keys are scored among the last 6
            x = keys[0, h, start:e].double()
            x = x - x.mean(0)
            want = torch.diagonal(x @ torch.linalg.inv(x.T @ x + RIDGE * torch.eye(4, dtype=x.dtype)) @ x.T)
            torch.testing.assert_close(got[0, h, s:e].double(), want[s - start :], rtol=1e-4, atol=1e-5)
    assert int(got[0, 1].argmax()) == 3
    assert torch.allclose(leverage_scores(keys, chunk=0), leverage_scores(keys, chunk=10))


def test_compactor_zscore_of_equal_scores_is_zero():
    """Equal scores standardise to 0, per batch row (0.1 fourteen times: its float mean is off by 1.5e-8, its std
    0, so all -14901 before, which saturates the sigmoid of the layer scope's head budgets); unequal ones to mean 0
    and deviation 1 over every head and token of the row."""
    from compress.kv.compactor import zscore

    s = torch.stack([torch.full((2, 7), 0.1), torch.arange(14.0).view(2, 7)])
    z = zscore(s)
    assert torch.equal(z[0], torch.zeros(2, 7)) and torch.equal(zscore(torch.zeros(1, 2, 3)), torch.zeros(1, 2, 3))
    torch.testing.assert_close((z[1].mean(), z[1].std(unbiased=False)), (torch.tensor(0.0), torch.tensor(1.0)))


def test_compactor_leverage_of_a_short_last_chunk_is_not_inflated():
    """A chunk's leverage scores sum to about its rank (min(n - 1, D)): scored on its own, a short last chunk of
    18 keys scored about 0.94 each against 0.03 in a full chunk of 512 (D = 16), so the layer kept its every key
    first whatever they held. Scored among the last 512 keys, it is on the scale of the others."""
    from compress.kv.compactor import leverage_scores

    torch.manual_seed(3)
    lev = leverage_scores(torch.randn(1, 2, 530, 16) * 3, chunk=512)
    full, tail = lev[..., :512].mean(), lev[..., 512:].mean()
    assert tail < 2 * full, (float(tail), float(full))
    assert torch.allclose(leverage_scores(torch.randn(1, 2, 40, 16), chunk=512).sum(-1), torch.tensor(16.0), atol=0.1)


def test_compactor_chunk_attention_is_non_causal_and_pads_a_short_last_chunk():
    """Each key gets the attention of its chunk's queries in both directions (a later query's attention counts for
    an earlier key and the reverse); a full chunk hands out ``chunk`` per query head, a short last one of ``n``
    its ``n`` queries' attention plus ``(chunk - n) / chunk`` per key (the reference kernel's padded rows)."""
    from compress.kv.compactor import chunk_attention

    torch.manual_seed(1)
    q, k = torch.randn(1, 4, 10, 8), torch.randn(1, 2, 10, 8)
    got = chunk_attention(q, k, chunk=4, scale=0.5)
    assert got.shape == (1, 2, 10)
    kk = k.repeat_interleave(2, dim=1)
    want = torch.softmax(q[:, :, :4] @ kk[:, :, :4].transpose(-1, -2) * 0.5, -1).sum(-2).view(1, 2, 2, 4).mean(2)
    torch.testing.assert_close(got[..., :4], want)
    torch.testing.assert_close(got[..., :4].sum(-1), torch.full((1, 2), 4.0))
    torch.testing.assert_close(got[..., 8:].sum(-1), torch.full((1, 2), 2 + 2 * 2 / 4))  # 2 queries + padding


def test_compactor_scores_un_rotated_keys_and_keeps_the_budget(tiny_llama, smol):
    """The leverage part reads the keys as projected (rotary undone: equal to k_proj of the layer's input); the
    layer scope moves budget between heads at the same total, the head scope keeps k in every head; the options
    change the selection."""
    from compress.kv.compactor import Compactor

    seen = {}
    comp = get_compressor("compactor", ratio=0.5)
    orig = Compactor.score

    def spy(self, x):
        seen.setdefault("x", x)
        return orig(self, x)

    object.__setattr__(comp, "score", lambda x: spy(comp, x))
    prefill(tiny_llama, comp, random_ids(T))
    x = seen["x"]
    raw = Compactor.raw_keys(x)
    n_kv, d = x.keys.shape[1], x.keys.shape[-1]
    with torch.inference_mode():
        want = x.module.k_proj(x.hidden).view(1, -1, n_kv, d).transpose(1, 2)
    torch.testing.assert_close(raw, want, rtol=1e-4, atol=1e-4)

    from ragcore.prompt import build_prompt

    prompt = build_prompt(smol.tokenizer, QUESTION, PASSAGES)
    t = prompt.question_start
    picked_by = {}
    for spec in ("compactor", "compactor(scope='head')", "compactor(blend=0.0)", "compactor(chunk=16)"):
        picked: dict = {}
        comp = recording(get_compressor(spec, ratio=0.6), picked)
        cache = kvcache.new_cache(smol.model.config)
        with torch.inference_mode(), comp.apply(smol.model, cache, prompt) as call:
            kvcache.call(smol.model, cache, input_ids=prompt.input_ids[:, :t], use_cache=True)
        kept, k = call.report.tokens_kept, comp.n_keep(t)
        assert sum(sum(v) for v in kept.values()) == sum(len(v) for v in kept.values()) * k
        if spec == "compactor":
            assert call.report.masks_only and len({n for v in kept.values() for n in v}) > 1
        if "head" in spec:
            assert {n for v in kept.values() for n in v} == {k} and not call.report.masks_only
        picked_by[spec] = [sorted(map(tuple, idx[0].tolist())) for idx, _ in (picked[i] for i in sorted(picked))]
    for spec in list(picked_by)[1:]:
        assert picked_by[spec] != picked_by["compactor"], spec


def test_compactor_on_a_cache_that_already_holds_tokens(tiny_llama):
    """A prefill continuing a cache (keys cached before it): the rotary embedding is undone at each key's own
    position, and the earlier keys, which no query of this prefill saw, still get scores."""
    from compress.kv.compactor import Compactor

    seen = {}
    comp = get_compressor("compactor", ratio=0.5)
    orig = Compactor.score
    object.__setattr__(comp, "score", lambda x: seen.setdefault("s", (x, orig(comp, x)))[1])
    ids = random_ids(T)
    cache = kvcache.new_cache(tiny_llama.config)
    with torch.inference_mode():
        kvcache.call(tiny_llama, cache, input_ids=ids[:, :20], use_cache=True)
        with comp.apply(tiny_llama, cache) as call:
            kvcache.call(tiny_llama, cache, input_ids=ids[:, 20:], use_cache=True)
        x, s = seen["s"]
        assert x.key_offset == 20 and s.shape == (1, x.n_kv, T) and torch.isfinite(s).all()
        n_kv, d = x.keys.shape[1], x.keys.shape[-1]
        want = x.module.k_proj(x.hidden).view(1, -1, n_kv, d).transpose(1, 2)
        torch.testing.assert_close(Compactor.raw_keys(x)[:, :, 20:], want, rtol=1e-4, atol=1e-4)
    assert call.report.tokens_kept
