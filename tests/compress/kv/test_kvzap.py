"""KVzap: the surrogate's file format, its fit against KVzip+'s scores, and its selection."""

from __future__ import annotations

import logging

import pytest
import torch

from compress.kv import get_compressor, kvzap
from compress.kv.kvzap import Surrogate, fingerprint, fit_surrogate, kvzip_targets
from ragcore.errors import ConfigError
from tests.compress.kv.helpers import prefill, recording
from tests.helpers import T, random_ids, tiny_model


def fitted(model, n: int = 8, holdout: int = 2) -> Surrogate:
    return fit_surrogate(model, [(random_ids(48, seed=s), None) for s in range(n)], holdout=holdout)


def test_file_round_trip_and_refusals(tiny_llama, tmp_path):
    sur = fitted(tiny_llama)
    path = sur.save(tmp_path / "s.safetensors")
    back = Surrogate.load(path, tiny_llama)
    assert torch.equal(back.weight, sur.weight) and torch.equal(back.bias, sur.bias)
    assert back.meta["holdout"] == 2 and back.meta["contexts"] == 6 and len(back.meta["r2"]) == 2

    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(ConfigError, match="cut.safetensors.*not a KVzap surrogate file"):
        Surrogate.load(cut)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[:-3] + bytes([data[-3] ^ 1]) + data[-2:])  # one bit of the last tensor flipped
    with pytest.raises(ConfigError, match="bad.safetensors.*does not match its sha256"):
        Surrogate.load(bad)
    with pytest.raises(ConfigError, match="fitted for another model"):
        Surrogate.load(path, tiny_model("qwen2"))
    with pytest.raises(ConfigError, match="no KVzap surrogate file at"):
        Surrogate.load(tmp_path / "none.safetensors")


def test_fingerprint_is_the_checkpoint_not_the_dtype(tiny_llama):
    import copy

    half = copy.deepcopy(tiny_llama).to(torch.bfloat16)
    assert fingerprint(half) == fingerprint(tiny_llama) != fingerprint(tiny_model("qwen2"))


def test_surrogate_predicts_held_out_kvzip_scores(smol):
    """Fitted on six SmolLM2 contexts, the surrogate ranks the tokens of two others as KVzip+ does, far above
    chance (per layer and head, Spearman-like agreement of the top half)."""
    tok = smol.tokenizer
    texts = [
        "The Eiffel Tower was completed in 1889 for the World's Fair in Paris. It is 330 metres tall.",
        "Bananas are yellow fruit that grow in tropical regions; they are rich in potassium and sugar.",
        "Marie Curie won two Nobel Prizes, in physics in 1903 and in chemistry in 1911, for radioactivity.",
        "The Amazon river flows through Brazil, Peru and Colombia into the Atlantic Ocean near Belem.",
        "Python is a programming language created by Guido van Rossum and first released in 1991.",
        "Mount Everest, on the border of Nepal and China, rises 8849 metres above the sea.",
        "The Great Wall of China was built over many centuries to protect northern borders from raids.",
        "Jupiter has four large moons discovered by Galileo Galilei in 1610: Io, Europa, Ganymede, Callisto.",
    ]
    contexts = [(tok(t, return_tensors="pt").input_ids, None) for t in texts]
    sur = fit_surrogate(smol.model, contexts, holdout=2)
    assert sur.meta["r2_mean"] > 0.2, sur.meta
    xs, ys = kvzip_targets(smol.model, contexts[-1][0])
    agree = []
    for layer in range(len(xs)):
        pred = sur.predict(layer, xs[layer][None])[0]  # (H_kv, T)
        for h in range(pred.shape[0]):
            k = pred.shape[1] // 2
            a = set(torch.topk(pred[h], k).indices.tolist())
            b = set(torch.topk(ys[layer][:, h], k).indices.tolist())
            agree.append(len(a & b) / k)
    assert sum(agree) / len(agree) > 0.65  # chance: 0.5


def test_keeps_the_surrogates_best(tiny_llama, tmp_path):
    """With a given surrogate file and scope='layer', every head keeps the top k of exp(hidden @ W + b)."""
    sur = fitted(tiny_llama)
    path = sur.save(tmp_path / "s.safetensors")
    comp = recording(get_compressor(f"kvzap(surrogate='{path}', scope='layer', safeguard=0, n_sink=0)", ratio=0.5), {})
    hidden = {}

    def grab(module, args, kwargs):
        hidden.setdefault(module.layer_idx, kwargs["hidden_states"].detach().clone())

    from ragcore import cache as kvcache

    picked = {}
    comp = recording(comp, picked)
    with kvcache.attention_hooks(tiny_llama, pre=grab):
        prefill(tiny_llama, comp, random_ids(T), question=False)
    for layer, (idx, mask) in picked.items():
        want = torch.topk(sur.predict(layer, hidden[layer]), T // 2, dim=-1).indices
        assert mask is None and torch.equal(idx.sort(-1).values, want.sort(-1).values)


def test_bundled_surrogate_found_by_fingerprint(tiny_llama, tmp_path, monkeypatch, caplog):
    fitted(tiny_model("qwen2")).save(tmp_path / "a-other.safetensors")
    mine = fitted(tiny_llama, n=5, holdout=0)
    mine.save(tmp_path / "b-mine.safetensors")
    monkeypatch.setattr(kvzap, "SURROGATES", tmp_path)
    with caplog.at_level(logging.INFO, logger="compress.kv.kvzap"):
        found = get_compressor("kvzap").find_surrogate(tiny_llama)
    assert torch.equal(found.weight, mine.weight) and "b-mine.safetensors" in caplog.text


def test_without_a_surrogate_it_is_kvzip_plus(tiny_llama, monkeypatch, caplog):
    """No surrogate for the model: KVzip+'s own scores (the reconstruction), the same selection as the kvzip spec
    with the surrogates' target layout, and a warning."""
    monkeypatch.setattr(kvzap, "SURROGATES", kvzap.SURROGATES / "none-here")
    got, want = {}, {}
    with caplog.at_level(logging.WARNING, logger="compress.kv.kvzap"):
        prefill(tiny_llama, recording(get_compressor("kvzap(n_sink=0)", ratio=0.5), got), random_ids(T))
    assert "no surrogate fitted for this model" in caplog.text
    spec = "kvzip(assistant_turn=True, plus=True, safeguard=0.2, n_sink=0)"
    prefill(tiny_llama, recording(get_compressor(spec, ratio=0.5), want), random_ids(T))
    for layer in want:
        assert torch.equal(got[layer][0], want[layer][0]) and torch.equal(got[layer][1], want[layer][1])


def test_surrogate_scores_keep_the_global_budget_and_decode(tiny_llama, smol, tmp_path):
    """With a surrogate, scope='global' keeps L x H_kv x k (layer, head, token) entries with every head at its floor
    or more (masks hide the padded slots), and decodes alike alone and batched."""
    from tests.compress.kv.test_conformance import check_budget
    from tests.compress.kv.test_methods import decodes_alone_and_batched
    from tests.helpers import Q

    path = fitted(tiny_llama).save(tmp_path / "s.safetensors")
    comp = get_compressor(f"kvzap(surrogate='{path}')", ratio=0.5)
    cache, call = prefill(tiny_llama, comp, random_ids(T))
    check_budget(tiny_llama, comp, call, cache, T, Q)
    assert call.report.masks_only  # uneven per-head budgets
    decodes_alone_and_batched(tiny_llama, smol.tokenizer, comp)
