"""CRAG's ``ratio`` option: each cluster keeps its best ``ceil((1 - ratio) * n)`` sentences, so the output
shrinks with the ratio, a large cluster keeps more than a small one, and the output stays within its budget."""

from __future__ import annotations

import pytest

from compress.context import CONTEXT_COMPRESSORS
from ragcore.errors import ConfigError
from ragcore.sentences import split_sentences
from tests.compress.context.test_conformance import inputs, lm  # noqa: F401 - the module's fixture


def kept_sentences(out) -> int:
    return sum(len(split_sentences(p.chunk.text)) for p in out)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_each_cluster_keeps_its_share(lm, ratio):  # noqa: F811
    ps = inputs(6)
    stage = CONTEXT_COMPRESSORS.build(f"crag(ratio={ratio})")
    labels, _, _ = stage.clusters(ps)
    per = {}
    for i, lab in enumerate(labels):
        per[lab] = per.get(lab, 0) + len(split_sentences(ps[i].chunk.text))
    want = sum(stage.kept(n) for n in per.values())
    out = stage.compress("When was the bridge built?", ps, lm)
    assert kept_sentences(out) == want
    assert want == sum(max(1, -(-(1 - ratio) * n // 1)) for n in per.values())
    tokens = sum(len(lm.tokenizer(p.chunk.text, add_special_tokens=False)["input_ids"]) for p in out)
    assert tokens <= stage.output_budget(ps, lm) + 2 * len(out)


def test_less_removed_keeps_more(lm):  # noqa: F811
    ps = inputs(6)
    sizes = [
        kept_sentences(CONTEXT_COMPRESSORS.build(f"crag(ratio={r})").compress("q?", ps, lm)) for r in (0.8, 0.5, 0.2)
    ]
    assert sizes[0] < sizes[1] < sizes[2]
    total = sum(len(split_sentences(p.chunk.text)) for p in ps)
    assert sizes[2] < total


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1])
def test_ratio_outside_zero_one_is_refused(bad):
    with pytest.raises(ConfigError, match="ratio"):
        CONTEXT_COMPRESSORS.build(f"crag(ratio={bad})")


@pytest.mark.parametrize(
    "spec, said",
    [
        ("crag(sentences=4, ratio=0.5)", "ratio=0.5 and sentences=4 exclude each other"),
        ("crag(mode='abstractive', ratio=0.9)", "ratio=0.9 applies to mode='extractive' only"),
    ],
)
def test_ratio_with_sentences_or_abstractive_is_refused(spec, said):
    with pytest.raises(ConfigError, match=said):
        CONTEXT_COMPRESSORS.build(spec)


def test_default_keeps_two_sentences_per_cluster():
    assert CONTEXT_COMPRESSORS.build("crag").kept(10) == 2 == CONTEXT_COMPRESSORS.build("crag(sentences=2)").kept(10)


def test_titles_let_a_sentence_that_names_its_subject_by_a_pronoun_be_found():
    """A sentence is embedded with its passage's title in front (DPR's encoding), so "It was completed in 1889."
    is found for a question on the Eiffel Tower; the kept text is the sentence alone, with its true span."""
    from ragcore.types import Chunk, ScoredChunk

    def sc(text: str, title: str, rank: int) -> ScoredChunk:
        return ScoredChunk(Chunk(text, title, metadata={"title": title}), {"hybrid": 1.0 - rank / 10}, rank)

    ps = [
        sc("It is made of wrought iron. It was completed in 1889.", "Eiffel Tower", 0),
        sc("It was completed in 1859 and it is a famous tower. Its bell weighs 13 tonnes.", "Big Ben", 1),
    ]
    question = "When was the Eiffel Tower completed?"
    (kept,) = CONTEXT_COMPRESSORS.build("crag(k=1, sentences=1)").compress(question, ps, None)
    assert kept.chunk.text == "It was completed in 1889." and kept.chunk.metadata["parent"] == ps[0].chunk.id
    assert ps[0].chunk.text[kept.chunk.start : kept.chunk.end] == kept.chunk.text
    (plain,) = CONTEXT_COMPRESSORS.build("crag(k=1, sentences=1, titles=False)").compress(question, ps, None)
    assert plain.chunk.metadata["parent"] == ps[1].chunk.id  # without the title, the other tower's sentence wins
    stage = CONTEXT_COMPRESSORS.build("crag")
    assert stage.sentence_text(ps[0].chunk, 0, 27) == "Eiffel Tower: It is made of wrought iron."
    titled = Chunk("Eiffel Tower\nIt is made of iron.", "x", metadata={"title": "Eiffel Tower"})
    assert stage.sentence_text(titled, 0, len(titled.text)) == titled.text  # no title twice
