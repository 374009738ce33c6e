"""The suites of issue 14 run end to end on a tiny model (SmolLM2's tokenizer) and write the keys they promise."""

from __future__ import annotations

import pytest

from eval.context_suites import kv_haystacks, needle_haystacks, run_crag, run_longctx
from eval.position import POSITIONS, calibration_examples, position_items, run_position
from ragcore.errors import ConfigError
from tests.helpers import tiny_generator, tiny_model

NQ = "tests/data/nq_small.jsonl.gz"
KV = "tests/data/kv_small.jsonl.gz"


@pytest.fixture(scope="module")
def lm(_smol_session):
    g = tiny_generator(tiny_model(vocab=len(_smol_session.tokenizer)), _smol_session.tokenizer)
    g.model.config.max_position_embeddings = 2048
    return g


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RAGCORE_CACHE", str(tmp_path_factory.getbasetemp() / "cache14"))


def test_position_items_hold_no_answer_in_distractors():
    items = position_items(NQ, limit=3, offset=0)
    assert items
    for it in items:
        assert len(it.distractors) == 9 and it.gold.id not in {c.id for c in it.distractors}
        for p in POSITIONS:
            ps = it.passages(p)
            assert ps[p].chunk.id == it.gold.id and len(ps) == 10
    assert len(calibration_examples(NQ, limit=2)) <= 2
    with pytest.raises(ConfigError, match="development slice"):
        calibration_examples(NQ, limit=201)


def test_position_run(lm):
    res = run_position(lm, NQ, ["retrieval", "reversed"], limit=1, offset=0, positions=(0, 9), max_new_tokens=2)
    assert res["n"] == 1 and set(res["orders"]) == {"retrieval", "reversed"}
    rev = res["orders"]["reversed"]
    assert rev["gold_slot"] == {"0": 9, "9": 0} and "diff_vs_retrieval" in rev
    assert set(rev["accuracy"]) == {"0", "9"}


def test_longctx_inputs_and_runs(lm):
    hay = kv_haystacks(lm, __import__("pathlib").Path(KV), 600, limit=2, offset=0)
    for h in hay:
        n = len(lm.tokenizer(h["text"])["input_ids"])
        assert 450 < n < 700 and f'"{h["answer"]}"' in h["text"] and h["text"].count(h["answer"]) == 1
        key = h["question"].split('"')[1]
        assert h["answer_prefix"] == f'"{key}": "' and f'{h["answer_prefix"]}{h["answer"]}"' in h["text"]
    needles = needle_haystacks(lm, 300, limit=1, offset=0)
    assert needles[0]["answer"] in needles[0]["text"] and needles[0]["answer_prefix"] is None
    assert 200 < len(lm.tokenizer(needles[0]["text"])["input_ids"]) < 450
    for method in ("infiniretri(segment=128, carry=64)", "truncate", "snapkv"):
        res = run_longctx(lm, KV, 600, method, limit=1, max_new_tokens=2)
        assert {"accuracy", "seconds_per_query", "peak_mem_bytes", "n"} <= set(res) and res["n"] == 1
        assert res["peak_mem_bytes"] > 0
    with pytest.raises(ConfigError, match="method 'nosuch'"):
        run_longctx(lm, KV, 600, "nosuch", limit=1)
    assert {"offset", "max_new_tokens", "answer_prefix"} <= set(res) and res["answer_prefix"] is True
    for kwargs, said in (
        ({"limit": 0}, "limit must be .*got 0"),
        ({"offset": -1}, "offset must be .*got -1"),
        ({"ratio": 1.5}, "ratio must be a number in \\[0, 1\\).*got 1.5"),
        ({"method": " "}, "method must name"),
    ):
        with pytest.raises(ConfigError, match=said):
            run_longctx(lm, KV, 600, **{"method": "snapkv", "limit": 1, **kwargs})


def test_crag_run(lm):
    res = run_crag(lm, NQ, k=5, limit=2, offset=0, max_new_tokens=2)
    assert res["n"] == 2 and res["crag"]["tokens_mean"] < res["plain"]["tokens_mean"]
    assert 0 < res["tokens_saved"] < 1 and "accuracy_diff_ci95" in res
    for p in res["predictions"]:
        assert {"tokens", "answer_kept", "accuracy", "text", "seconds"} <= set(p["crag"])


def test_crag_without_generation_counts_tokens_and_kept_answers(lm):
    res = run_crag(lm, NQ, k=5, limit=3, offset=0, generate=False)
    assert res["n"] == 3 and "accuracy_diff" not in res and "accuracy" not in res["plain"]
    assert all("text" not in p["plain"] and "accuracy" not in p["crag"] for p in res["predictions"])
    held = [p["crag"]["answer_kept"] for p in res["predictions"] if p["plain"]["answer_kept"]]
    assert held and res["answer_kept_n"] == len(held) and res["answer_kept"] == pytest.approx(sum(held) / len(held))
    with_gen = run_crag(lm, NQ, k=5, limit=3, offset=0, max_new_tokens=2)
    assert [p["crag"]["tokens"] for p in with_gen["predictions"]] == [p["crag"]["tokens"] for p in res["predictions"]]


def test_answer_kept_reads_the_passages_as_nq_accuracy_reads_an_answer():
    from eval.context_suites import answer_kept
    from ragcore.types import Chunk

    ps = [Chunk("The bridge opened in 1932.", "a"), Chunk("Sydney, Australia.", "b")]
    assert answer_kept(ps, ["1932"]) == 1.0 and answer_kept(ps, ["the Harbour"]) == 0.0
    assert answer_kept(ps, ["sydney australia"]) == 1.0 and answer_kept(ps, ["193"]) == 0.0  # whole words only


def test_no_generate_is_refused_outside_crag(capsys):
    from ragcore.cli import main

    assert main(["eval", "position", "--no-generate", "--model", "smollm2-135m"]) != 0
    assert "--no-generate applies to eval crag only, not position" in capsys.readouterr().err
    assert main(["eval", "crag", "--no-generate", "--max-new-tokens", "8", "--model", "smollm2-135m"]) != 0
    assert "--max-new-tokens 8 has nothing to limit with --no-generate" in capsys.readouterr().err


def test_eval_crag_runs_the_method_it_is_given(lm, monkeypatch):
    """`ragcore eval crag --method SPEC` compares that compressor (not always the default CRAG)."""
    from types import SimpleNamespace

    from eval import context_suites

    seen = {}

    def fake(model, data, k, method, *rest):
        seen["method"] = method
        return {}

    monkeypatch.setattr(context_suites, "run_crag", fake)
    a = SimpleNamespace(suite="crag", model=lm, data=NQ, k=5, method="crag(sentences=4)", limit=1, offset=0)
    a.device, a.max_new_tokens = "cpu", 2
    context_suites.run_suite(a)
    assert seen["method"] == "crag(sentences=4)"
    context_suites.run_suite(SimpleNamespace(**{**vars(a), "method": None}))
    assert seen["method"] == "crag"


def test_longctx_items_are_the_suites_inputs(lm):
    from pathlib import Path

    from eval.context_suites import longctx_items
    from eval.metrics import contains
    from eval.resources import peak_memory

    assert longctx_items(lm, KV, 300, 2, 1) == kv_haystacks(lm, Path(KV), 300, limit=2, offset=1)
    assert longctx_items(lm, "needle", 300, 1, 0) == needle_haystacks(lm, 300, limit=1, offset=0)
    assert contains('the value is "a-1"', "a-1") == 1.0 and contains("A-1", "a-1") == 0.0 and contains("x", "") == 0.0
    assert peak_memory("cpu") > 0
