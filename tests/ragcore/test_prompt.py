"""Prompt building: several prompts tokenised at once equal one by one, whatever the tokenizer was left set to."""

import copy
from dataclasses import replace

import pytest

from ragcore.prompt import build_prompt, build_prompts, extend_prompt
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


QUESTIONS = [
    "When was it built?",
    "  Where is Big Ben?  ",
    "日本の首都は？",
    "Line one\nline two",
    "x" * 300,
    '"quoted" </passage> <|im_start|>',
    "?",
]


@pytest.fixture(scope="module", params=["smollm2-135m", "qwen2.5-0.5b"])
def tokenizer(request, _smol_session):
    if request.param == "smollm2-135m":
        return copy.deepcopy(_smol_session.tokenizer)
    from transformers import AutoTokenizer

    from ragcore.models import resolve

    return AutoTokenizer.from_pretrained(resolve(request.param, "generator"))


@pytest.mark.parametrize("system, prefix", [(None, None), ("Be brief.", '"Answer": "')])
def test_extend_prompt_equals_a_full_build(tokenizer, system, prefix):
    """A prompt extended from the context's own prompt is the one build_prompt makes: text, ids, offsets, spans
    (both bundled models' tokenizers)."""
    tok = tokenizer
    base = build_prompt(tok, "?", PASSAGES, system, prefix)
    for q in QUESTIONS:
        got = extend_prompt(base, q)
        want = build_prompt(tok, q, PASSAGES, system, prefix)
        assert got is not None and _same(got, want), q
        assert (got.question, got.system, got.answer_prefix, got.passages) == (
            want.question,
            want.system,
            want.answer_prefix,
            want.passages,
        )


def test_extend_prompt_declines_what_it_cannot_vouch_for(smol):
    tok = smol.tokenizer
    base = build_prompt(tok, "?", PASSAGES)
    closed = build_prompt(tok, "?", PASSAGES, system="Answer the question with a short phrase.")  # stored as default
    assert extend_prompt(closed, "Why?") is None  # its text is not the one the stored fields rebuild
    assert extend_prompt(replace(base, offsets=None), "Why?") is None
    assert extend_prompt(replace(base, tokenizer=None), "Why?") is None
