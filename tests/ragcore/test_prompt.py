"""Prompt building: several prompts tokenised at once equal one by one, whatever the tokenizer was left set to."""

import copy

from ragcore.prompt import build_prompt, build_prompts
from ragcore.types import Chunk

PASSAGES = [Chunk("The Eiffel Tower is in Paris. It was completed in 1889. " * 6, "a"), Chunk("Big Ben ✓ 日本", "b")]


def _same(a, b):
    return a.text == b.text and a.input_ids.equal(b.input_ids) and a.offsets == b.offsets and a.spans == b.spans


def test_a_batch_of_prompts_equals_one_by_one(smol):
    tok = smol.tokenizer
    reqs = [
        ("When was it built?", PASSAGES, None, None),
        ("Where?", PASSAGES[1:], "Be brief.", '"Answer": "'),
        ("Q?", None, None, None),
    ]
    for p, r in zip(build_prompts(tok, reqs), reqs):
        assert _same(p, build_prompt(tok, *r))


def test_padding_or_truncation_left_on_the_tokenizer_changes_no_prompt(smol):
    tok = copy.deepcopy(smol.tokenizer)
    want = build_prompt(tok, "When was it built?", PASSAGES)
    tok(["x " * 100], truncation=True, max_length=40)  # an earlier call elsewhere, with truncation
    tok(["a", "b b b"], padding=True)  # and one with padding
    tok.backend_tokenizer.enable_truncation(max_length=32)  # or a tokenizer file that ships with truncation
    assert _same(build_prompt(tok, "When was it built?", PASSAGES), want)
    assert _same(build_prompts(tok, [("When was it built?", PASSAGES, None, None)])[0], want)


def test_no_requests_no_prompts(smol):
    assert build_prompts(smol.tokenizer, []) == []
