"""AttnRank's profile: measured through the attention module, saved, reloaded, refused for another model or prompt
format; the reranker fills the most attended slots with the best passages. Attention sorting on SmolLM2."""

from __future__ import annotations

import numpy as np
import pytest

from rerank.attention_sort import AttentionSort
from rerank.attnrank import AttnRank, Profile, ProfileMismatchError, ProfileNotFoundError, calibrate, profile_path
from tests.helpers import tiny_generator, tiny_model
from tests.rerank.helpers import passages


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGCORE_CACHE", str(tmp_path))
    return tmp_path


def tiny_lm(tokenizer, seed_layers: int = 2):
    g = tiny_generator(tiny_model(layers=seed_layers, vocab=len(tokenizer)), tokenizer)
    g.model_name = f"tiny{seed_layers}"
    return g


def test_profile_saved_reloaded_and_refused(_smol_session, cache):
    tok = _smol_session.tokenizer
    lm = tiny_lm(tok)
    with pytest.raises(ProfileNotFoundError, match="no attention profile of 'tiny2'") as e:
        AttnRank().rerank("q", passages(4), lm)
    assert e.value.hint == "run `ragcore calibrate --model tiny2` first"
    prof = calibrate(lm, [("Which one?", passages(5, seed=s)) for s in range(2)])
    a = np.asarray(prof.attention)
    assert a.shape == (2, 5) and np.allclose(a.sum(1), 1) and prof.n == 2
    assert prof.layer == int(np.argmax(prof.ratios()))
    path = prof.save(profile_path(lm))
    assert Profile.load(path) == prof
    out = AttnRank().rerank("q", passages(5), lm)
    order = prof.slot_order(5)
    assert [p.chunk.id for p in out][order[0]] == passages(5)[0].chunk.id  # the best goes to the most attended slot
    other = tiny_lm(tok, seed_layers=3)  # another model: its own (missing) profile, and this one refused
    with pytest.raises(ProfileNotFoundError):
        AttnRank().rerank("q", passages(4), other)
    with pytest.raises(ProfileMismatchError, match="calibrated for model 'tiny2'"):
        AttnRank(profile=str(path)).rerank("q", passages(4), other)


def test_profile_refused_for_another_prompt_format(_smol_session, cache, monkeypatch):
    lm = tiny_lm(_smol_session.tokenizer)
    path = calibrate(lm, [("Which one?", passages(3))]).save(profile_path(lm))
    import ragcore.prompt

    monkeypatch.setattr(ragcore.prompt, "SYSTEM", "Another instruction.")
    with pytest.raises(ProfileMismatchError, match="prompt format"):
        AttnRank(profile=str(path)).rerank("q", passages(3), lm)


def test_slot_order_resamples():
    prof = Profile("m", "d", "f", [[0.4, 0.1, 0.1, 0.1, 0.3]], 1, 0)
    assert prof.slot_order(5) == [0, 4, 1, 2, 3]
    assert prof.slot_order(3)[:2] == [0, 2]
    assert prof.ratios()[0] == pytest.approx(0.3 / 0.1)


def test_attention_sort_puts_the_most_attended_last(_smol_session):
    lm = tiny_lm(_smol_session.tokenizer)
    out = AttentionSort(rounds=1).rerank("Which city has a harbour?", passages(3), lm)
    mass = [p.scores["attention_sort"] for p in out]
    assert mass == sorted(mass) and len(set(mass)) == 3


def test_attention_sort_can_put_the_most_attended_first(_smol_session):
    lm = tiny_lm(_smol_session.tokenizer)
    out = AttentionSort(rounds=1, place="first").rerank("Which city has a harbour?", passages(3), lm)
    mass = [p.scores["attention_sort"] for p in out]
    assert mass == sorted(mass, reverse=True) and len(set(mass)) == 3


def test_attention_sort_calibration_subtracts_the_content_free_question(_smol_session):
    """ICR's calibration: a passage's score is its attention under the question minus that under "N/A", both
    measured on the same order; the question's tokens can be the rows instead of the decoding position."""
    from rerank.attention_sort import CONTENT_FREE

    lm = tiny_lm(_smol_session.tokenizer)
    ps, q = passages(4), "Which city has a harbour?"
    for query in ("last", "question"):
        raw = AttentionSort(query=query).scores(q, ps, lm)
        na = AttentionSort(query=query).scores(CONTENT_FREE, ps, lm)
        cal = AttentionSort(query=query, calibration="na").scores(q, ps, lm)
        assert cal == pytest.approx([r - n for r, n in zip(raw, na)], abs=1e-6)
        assert raw != pytest.approx(na)  # the question changes what is read
    assert AttentionSort(query="question").scores(q, ps, lm) != pytest.approx(AttentionSort().scores(q, ps, lm))
    out = AttentionSort(rounds=1, calibration="na", place="first").rerank(q, ps, lm)
    s = [p.scores["attention_sort"] for p in out]
    assert s == sorted(s, reverse=True)


def test_attention_sort_calibrated_against_the_content_free_question_itself_says_so(_smol_session, caplog):
    """Asked "N/A" (ICR's content-free question, spaces around it stripped as the prompt does), the calibrated score
    of every passage is 0: the order is kept, with a warning instead of silence, and no prefill is spent."""
    import logging

    from rerank.attention_sort import CONTENT_FREE

    lm = tiny_lm(_smol_session.tokenizer)
    ps = passages(4)
    calls = []
    forward = lm.model.forward
    lm.model.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    with caplog.at_level(logging.WARNING, logger="rerank.attention_sort"):
        out = AttentionSort(calibration="na", place="first").rerank(f" {CONTENT_FREE}\n", ps, lm)
    assert [p.chunk.id for p in out] == [p.chunk.id for p in ps] and calls == []
    assert all(p.scores["attention_sort"] == 0.0 for p in out)
    assert "content-free" in caplog.text and "'N/A'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rerank.attention_sort"):
        AttentionSort(calibration="na", rounds=1).rerank("n/a", ps, lm)  # another text: measured as any question
    assert calls and not caplog.text


def test_the_layer_rule_wants_a_basin_not_a_ramp_and_old_profiles_follow_it(tmp_path):
    from rerank.attnrank import LAYER_RULE, choose_layer

    ramp = [0.05, 0.1, 0.1, 0.15, 0.6]  # high end next to the question only: no basin
    basin = [0.3, 0.1, 0.1, 0.1, 0.4]
    assert choose_layer(np.array([ramp, basin])) == 1
    old = Profile("m", "d", "f", [ramp, basin], 3, 0, rule="largest edge-to-middle ratio: mean(first, last slot)")
    loaded = Profile.load(old.save(tmp_path / "p.json"))
    assert loaded.layer == 1 and loaded.rule == LAYER_RULE and loaded.attention == old.attention
