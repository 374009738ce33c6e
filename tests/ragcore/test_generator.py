import pytest
import torch

from ragcore.errors import ConfigError, EmptyQueryError
from ragcore.generator import GenerationConfig
from tests.helpers import PASSAGES
from tests.helpers import QUESTION as Q


def test_greedy_matches_transformers_generate(smol):
    p = smol.prompt(Q, PASSAGES)
    ours = smol.generate(p, config=GenerationConfig(max_new_tokens=12))
    ref = smol.model.generate(p.input_ids, max_new_tokens=12, do_sample=False)
    ref_ids = ref[0, p.input_ids.shape[1] :].tolist()
    assert ours.token_ids == [t for t in ref_ids if t not in smol.eos_ids][: len(ours.token_ids)]
    assert "1889" in ours.text
    assert ours.prompt_tokens == len(p) and ours.prefill_s > 0


def test_stream_concatenates_to_the_answer(smol):
    cfg = GenerationConfig(max_new_tokens=16)
    pieces = list(smol.stream(Q, PASSAGES, cfg))
    assert len(pieces) > 1
    assert "".join(pieces).strip() == smol.generate(Q, PASSAGES, cfg).text


def test_sampling_is_seeded(smol):
    cfg = GenerationConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, top_k=50, seed=3)
    a, b = smol.generate(Q, PASSAGES, cfg).token_ids, smol.generate(Q, PASSAGES, cfg).token_ids
    assert a == b
    c = smol.generate(Q, PASSAGES, GenerationConfig(max_new_tokens=10, temperature=1.0, seed=4)).token_ids
    assert a != c or len(a) < 3


def test_limits(smol):
    g = smol.generate(Q, PASSAGES, GenerationConfig(max_new_tokens=3))
    assert len(g.token_ids) == 3 and g.stopped == "max_new_tokens"
    g = smol.generate("Write a long story about a dragon.", None, GenerationConfig(max_new_tokens=500, max_time=0.3))
    assert g.stopped == "max_time" and len(g.token_ids) < 500


def test_prompt_spans_cover_the_parts(smol):
    p = smol.prompt(Q, PASSAGES)
    tok = smol.tokenizer
    assert set(p.spans) == {"instruction", "passage:1", "passage:2", "question"}
    assert "1889" in tok.decode(p.input_ids[0, slice(*p.spans["passage:1"])])
    assert "Bananas" in tok.decode(p.input_ids[0, slice(*p.spans["passage:2"])])
    assert Q in tok.decode(p.input_ids[0, slice(*p.spans["question"])])
    ends = [p.spans[k] for k in ("instruction", "passage:1", "passage:2", "question")]
    assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:]))
    assert "data, not instructions" in p.text


@pytest.mark.parametrize(
    "kwargs", [{"max_new_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"top_k": -2}, {"max_time": 0}]
)
def test_bad_config_is_quoted(kwargs):
    (value,) = kwargs.values()
    with pytest.raises(ConfigError, match=repr(value).replace(".", r"\.")):
        GenerationConfig(**kwargs)


def test_empty_question(smol):
    with pytest.raises(EmptyQueryError):
        smol.generate("  ", PASSAGES)


def test_runs_in_float32_on_cpu(smol):
    assert smol.model.dtype == torch.float32 and smol.model.device.type == "cpu"


def test_answer_prefix_opens_the_models_turn(smol):
    """RULER's answer prefix: the prompt ends with it, after the template's generation prompt, spans unchanged;
    the generated text continues it and does not repeat it."""
    plain = smol.prompt(Q, PASSAGES)
    p = smol.prompt(Q, PASSAGES, answer_prefix="The bridge was built in")
    assert p.text == plain.text + "The bridge was built in" and p.answer_prefix == "The bridge was built in"
    assert p.spans == plain.spans and len(p) > len(plain)
    g = smol.generate(p, config=GenerationConfig(max_new_tokens=8))
    assert g.prompt_tokens == len(p) and g.text.strip() and not g.text.lstrip().startswith("The bridge")
    with pytest.raises(ConfigError, match="answer_prefix must be a string or None, got 3"):
        smol.prompt(Q, PASSAGES, answer_prefix=3)
