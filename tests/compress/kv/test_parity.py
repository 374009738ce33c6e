"""Parity with the code before the stage contract (commit c4b6274): every compressor, question-agnostic and
query-aware, generates the same tokens and keeps the same tokens per layer and head on the real SmolLM2.

The expected values were recorded by running the same generations on c4b6274 (before per-call state moved onto the
call, hooks into the cache adapter, and options into declared checks); the refactor changed no behaviour."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from compress.kv import get_compressor
from ragcore.generator import GenerationConfig
from ragcore.types import Chunk

RECORDED = json.loads((Path(__file__).parents[2] / "data" / "kv_parity_c4b6274.json").read_text())
PASSAGES = [
    Chunk("The Eiffel Tower was completed in 1889 for the World's Fair in Paris. It is 330 metres tall.", "eiffel"),
    Chunk("Bananas are yellow fruit rich in potassium, grown in tropical regions of the world.", "bananas"),
    Chunk("Mars is the red planet. Olympus Mons on Mars is the tallest volcano in the Solar System.", "mars"),
]


@pytest.mark.parametrize("key", sorted(RECORDED["runs"]))
def test_same_generation_as_before_the_refactor(smol, key):
    question, name, ratio, query_aware = key.split("|")
    tokens, kv_bytes, kept = RECORDED["runs"][key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 'retrieval' is now 'retrieval_heads'
        comp = get_compressor(name, ratio=float(ratio))
    g = smol.generate(
        smol.prompt(question, PASSAGES),
        config=GenerationConfig(max_new_tokens=RECORDED["max_new_tokens"]),
        compressor=comp,
        query_aware=query_aware == "True",
    )
    got_kept = {str(k): v for k, v in g.stats["kv_report"]["tokens_kept"].items()}
    assert (g.token_ids, g.stats["kv_bytes"], got_kept) == (tokens, kv_bytes, kept)
