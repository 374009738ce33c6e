"""KV compressors through the real SmolLM2: unchanged at ratio 0, batched = one by one, one instance shared by
two threads."""

from __future__ import annotations

import threading

import pytest

from compress.kv import get_compressor
from ragcore.errors import ConfigError
from ragcore.generator import GenerationConfig
from tests.helpers import PASSAGES, QUESTION, hooks_left


def test_ratio_zero_generation_is_unchanged(smol):
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
    assert hooks_left(smol.model) == 0


def test_batch_generation_equals_one_by_one(smol):
    cfg = GenerationConfig(max_new_tokens=12)
    prompts = [smol.prompt(QUESTION, PASSAGES), smol.prompt("What colour are bananas?", PASSAGES[::-1])]
    for name in ("none", "snapkv", "adaptive"):
        comp = None if name == "none" else get_compressor(name, ratio=0.5)
        one = [smol.generate(p, config=cfg, compressor=comp) for p in prompts]
        many = smol.generate_batch(prompts, config=cfg, compressor=comp)
        assert [x.text for x in many] == [x.text for x in one], name
        assert [x.stats["kv_bytes"] for x in many] == [x.stats["kv_bytes"] for x in one]
    assert smol.generate_batch([]) == [] and hooks_left(smol.model) == 0
    with pytest.raises(ConfigError, match="Prompt"):
        smol.generate_batch(["a question"])


@pytest.mark.parametrize("spec", ["snapkv", "adaptive:snapkv", "layers:snapkv", "kvzip"])
def test_one_instance_serves_two_threads(smol, spec):
    """One compressor, one Generator, two threads generating at once (each several times, started together): each
    thread gets the answer and the KV report it gets alone."""
    comp = get_compressor(spec, ratio=0.5)
    cfg = GenerationConfig(max_new_tokens=8)
    prompts = [smol.prompt(QUESTION, PASSAGES), smol.prompt("What colour are bananas?", PASSAGES[::-1])]
    alone = [smol.generate(p, config=cfg, compressor=comp, query_aware=True) for p in prompts]
    start = threading.Barrier(2)
    got: dict[int, list] = {0: [], 1: []}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            start.wait()
            for _ in range(3):
                got[i].append(smol.generate(prompts[i], config=cfg, compressor=comp, query_aware=True))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in (0, 1):
        for g in got[i]:
            assert g.token_ids == alone[i].token_ids
            assert g.stats["kv_report"] == alone[i].stats["kv_report"]
            assert g.stats["kv_bytes"] == alone[i].stats["kv_bytes"] < g.stats["kv_bytes_full"]
    assert hooks_left(smol.model) == 0
