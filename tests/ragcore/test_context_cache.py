"""A compressed context answers many questions unchanged, equals a fresh compression, and survives a save only
when intact."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from compress.kv import DEFAULT_AGNOSTIC, get_compressor
from ragcore.context_cache import MANIFEST, TENSORS, CompressedContext, manifest_sha256
from ragcore.errors import ConfigError, ContextCacheError, PromptTooLongError
from ragcore.generator import GenerationConfig
from ragcore.pipeline import Pipeline
from ragcore.types import Chunk
from tests.helpers import PASSAGES, QUESTION

CFG = GenerationConfig(max_new_tokens=4)
OTHER = "What colour are bananas?"


def test_reuse_equals_a_fresh_compression_and_never_changes(smol):
    """The tenth answer equals the first; each equals what a fresh question-agnostic compression answers; the
    compressed tensors are untouched by answering. ``kvzip``'s global budgets carry per-head masks."""
    spec = "kvzip"
    ctx = smol.prefill_context(PASSAGES, spec, ratio=0.5)
    before = [(k.clone(), v.clone()) for k, v in ctx.layers]
    first = ctx.ask(QUESTION, CFG)
    other = ctx.ask(OTHER, CFG)
    for _ in range(8):
        last = ctx.ask(QUESTION, CFG)
    assert last.token_ids == first.token_ids and len(first.token_ids) > 0
    for (k, v), (k0, v0) in zip(ctx.layers, before):
        assert torch.equal(k, k0) and torch.equal(v, v0)
    for q, got in ((QUESTION, first), (OTHER, other)):
        fresh = smol.generate(smol.prompt(q, PASSAGES), config=CFG, compressor=get_compressor(spec, ratio=0.5))
        assert got.token_ids == fresh.token_ids, (spec, q)
        assert got.stats["kv_bytes"] == fresh.stats["kv_report"]["kv_bytes_after"]
    assert first.stats["kv_bytes"] < first.stats["kv_bytes_full"]
    assert ctx.masks and ctx.report["masks_only"]


def test_save_load_round_trip_and_refusals(smol, tmp_path):
    ctx = smol.prefill_context(PASSAGES, ratio=0.5)  # the default: compress.kv.DEFAULT_AGNOSTIC
    assert ctx.compressor.startswith(DEFAULT_AGNOSTIC.split("(")[0]) and "ratio=0.5" in ctx.compressor
    want = ctx.ask(QUESTION, CFG).token_ids
    folder = ctx.save(tmp_path / "ctx")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ctx.lock", "ctx"]  # no temporary folder left
    again = CompressedContext.load(folder, smol)
    assert again.ask(QUESTION, CFG).token_ids == want and again.masks.keys() == ctx.masks.keys()
    ctx.save(folder)  # replacing a saved context is atomic too
    assert CompressedContext.load(folder, smol).compressor == ctx.compressor

    data = (folder / TENSORS).read_bytes()
    (folder / TENSORS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ContextCacheError, match="truncated"):
        CompressedContext.load(folder, smol)
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    (folder / TENSORS).write_bytes(bytes(flipped))
    with pytest.raises(ContextCacheError, match="sha256"):
        CompressedContext.load(folder, smol)
    (folder / TENSORS).write_bytes(data)
    m = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**m, "version": 99}))
    with pytest.raises(ContextCacheError, match="version 99"):
        CompressedContext.load(folder, smol)
    other = {**m, "model": "qwen2.5-0.5b"}
    (folder / MANIFEST).write_text(json.dumps({**other, "sha256": manifest_sha256(other)}))
    with pytest.raises(ContextCacheError, match="made by model 'qwen2.5-0.5b'"):
        CompressedContext.load(folder, smol)
    with pytest.raises(ContextCacheError, match="no manifest.json"):
        CompressedContext.load(tmp_path / "nothing", smol)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: {**m, "compressor": "snapkv(ratio=0.1)"},  # any hand edit: the manifest's own sha256
        lambda m: {**m, "passages": [{**m["passages"][0], "text": "changed"}] + m["passages"][1:]},
        lambda m: {k: v for k, v in m.items() if k != "sha256"},
    ],
)
def test_a_changed_manifest_is_refused(smol, tmp_path, edit):
    folder = smol.prefill_context(PASSAGES, "knorm", ratio=0.5).save(tmp_path / "ctx")
    m = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps(edit(m)))
    with pytest.raises(ContextCacheError, match="manifest was changed"):
        CompressedContext.load(folder, smol)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: {k: v for k, v in m.items() if k != "passages"}, "lacks passages"),
        (lambda m: {**m, "n_layers": m["n_layers"] + 1}, "layers' keys and values; the model has"),
        (lambda m: {**m, "context_tokens": m["context_tokens"] - 1}, "no context_ids of"),
        (lambda m: {**m, "passages": [{"oops": 1}]}, "malformed passage"),
    ],
)
def test_an_inconsistent_manifest_is_refused_with_its_reason(smol, tmp_path, edit, match):
    """A manifest whose sha256 holds but whose content does not fit the tensors or the model (written by another
    tool, say): a ContextCacheError naming what is wrong, never a KeyError or a shape error."""
    folder = smol.prefill_context(PASSAGES, "knorm", ratio=0.5).save(tmp_path / "ctx")
    m = edit(json.loads((folder / MANIFEST).read_text()))
    (folder / MANIFEST).write_text(json.dumps({**m, "sha256": manifest_sha256(m)}))
    with pytest.raises(ContextCacheError, match=match):
        CompressedContext.load(folder, smol)


def test_save_replaces_only_an_empty_folder_or_a_saved_context(smol, tmp_path):
    ctx = smol.prefill_context(PASSAGES, "knorm", ratio=0.5)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "important.txt").write_text("keep me")
    with pytest.raises(ContextCacheError, match="not a saved context"):
        ctx.save(mine)
    assert (mine / "important.txt").read_text() == "keep me"
    afile = tmp_path / "afile"
    afile.write_text("a file")
    for target, match in ((afile, "is a file, not a folder"), (afile / "ctx", "under .* it is a file")):
        with pytest.raises(ContextCacheError, match=match):
            ctx.save(target)
    assert afile.read_text() == "a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "mine"]  # nothing hidden left behind
    (tmp_path / "empty").mkdir()
    assert CompressedContext.load(ctx.save(tmp_path / "empty"), smol).compressor == ctx.compressor


def test_save_refuses_places_it_cannot_write_and_a_failed_write_keeps_the_saved_context(smol, tmp_path, monkeypatch):
    """The current folder, a filesystem root and a place where no folder can be made are refused before any
    writing; a write that fails (a full disk) is a ContextCacheError and leaves the saved context as it was."""
    import safetensors.torch

    ctx = smol.prefill_context(PASSAGES, "knorm", ratio=0.5)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for target, match in (
        (".", "current folder"),
        (str(tmp_path), "current folder or holds it"),
        ("/", "filesystem root"),
        ("/proc/ragcore-ctx", "'/proc' is not writable"),
    ):
        with pytest.raises(ContextCacheError, match=match):
            ctx.save(target)
    assert not any(here.iterdir())
    saved = ctx.save(tmp_path / "ctx")
    before = {p.name: p.read_bytes() for p in saved.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(ContextCacheError, match="No space left on device.*nothing there changed"):
        ctx.save(saved)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    assert {p.name for p in tmp_path.iterdir()} - {".ctx.lock"} == {"ctx", "here"}  # no temporary folder left
    assert CompressedContext.load(saved, smol).ask(QUESTION, CFG).text == ctx.ask(QUESTION, CFG).text


def test_generator_takes_a_compressor_spec_string_and_refuses_anything_else(smol):
    want = smol.generate(QUESTION, PASSAGES, CFG, compressor=get_compressor("knorm", ratio=0.5))
    got = smol.generate(QUESTION, PASSAGES, CFG, compressor="knorm(ratio=0.5)")
    assert got.token_ids == want.token_ids and got.stats["kv_bytes"] == want.stats["kv_bytes"]
    with pytest.raises(ConfigError, match="compressor must be a KV compressor or its spec string, got int 5"):
        smol.generate(QUESTION, PASSAGES, CFG, compressor=5)


def test_a_question_that_leaves_no_room_for_the_answer_is_refused(smol):
    ctx = smol.prefill_context(PASSAGES, "knorm", ratio=0.5)
    long = "why " * smol.context_window
    with pytest.raises(PromptTooLongError, match=f"reads {smol.context_window} tokens"):
        ctx.ask(long, CFG)
    with pytest.raises(PromptTooLongError):
        ctx.ask_batch([QUESTION, long], CFG)


def test_a_context_longer_than_the_window_is_refused_before_its_prefill(smol):
    calls = []
    handle = smol.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        big = [Chunk("word " * smol.context_window, source_id="big")]
        with pytest.raises(PromptTooLongError, match=f"window of {smol.context_window} tokens"):
            smol.prefill_context(big, "knorm", ratio=0.5)
    finally:
        handle.remove()
    assert calls == []


def test_pipeline_defaults(retriever, smol):
    """One question compresses query-aware by default; compress_context is question-agnostic with the default."""
    p = Pipeline(retriever, smol, k=2, config=CFG, compressor="snapkv(ratio=0.5)")
    assert p.query_aware is True
    assert p.ask("What is the tallest volcano?").kv["query_aware"] is True
    ctx = p.compress_context("What is the tallest volcano?")
    assert len(ctx.passages) == 2 and ctx.compressor.startswith(DEFAULT_AGNOSTIC.split("(")[0])
    ans = p.ask_context(ctx, "Which planet has the most extensive rings?")
    assert ans.kv["query_aware"] is False and ans.citations and ans.text
    with pytest.raises(ConfigError, match="at least one passage"):
        p.compress_context([])


def test_a_decoding_step_on_the_context_costs_about_what_one_on_a_full_cache_does(smol):
    """Tensor operations per decoding step (each a kernel launch or more on a GPU): answering from a compressed
    context with per-head masks adds a few views per layer to a step on a plain full cache, not the dozen or so
    operations per layer and step of rebuilding the masks (issue #16: reuse was slower than full prefills on a
    GPU)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            self.n += 1
            return func(*args, **(kwargs or {}))

    def per_step(answer) -> float:
        counts, tokens = [], []
        for new in (2, 7):  # the first step (building each layer's mask row) in both
            c = Count()
            with c:
                g = answer(GenerationConfig(max_new_tokens=new))
            counts.append(c.n)
            tokens.append(len(g.token_ids))
        assert tokens[1] > tokens[0]
        return (counts[1] - counts[0]) / (tokens[1] - tokens[0])

    ctx = smol.prefill_context(PASSAGES, "kvzip", ratio=0.5)
    assert ctx.masks
    prompt = ctx.prompt(QUESTION)
    ask = per_step(lambda cfg: ctx.ask(QUESTION, cfg))
    full = per_step(lambda cfg: smol.generate(prompt, config=cfg))
    layers = smol.model.config.num_hidden_layers
    assert ask < full + 6 * layers, (ask, full, layers)


def test_ask_batch_gives_the_answers_of_ask(smol):
    """Questions decoded together from one compressed context get the greedy answers that one by one get."""
    ctx = smol.prefill_context(PASSAGES, "kvzip", ratio=0.5)
    questions = [QUESTION, OTHER, "Where was the World's Fair of 1889?"]
    cfg = GenerationConfig(max_new_tokens=8)
    one = [ctx.ask(q, cfg) for q in questions]
    batch = ctx.ask_batch(questions, cfg)
    assert [g.token_ids for g in batch] == [g.token_ids for g in one]
    assert [g.text for g in batch] == [g.text for g in one] and all(g.stats["batch_size"] == 3 for g in batch)
    assert batch[0].stats["kv_bytes"] == one[0].stats["kv_bytes"] and ctx.ask_batch([], cfg) == []
    assert batch[0].stats["kv_bytes_full"] == one[0].stats["kv_bytes_full"]


def test_ask_batch_feeds_every_question_in_one_model_call(smol):
    """The questions go on the shared context in one call (B rows), then one call per decoding step: 1 + steps
    calls, not one feed per question."""
    ctx = smol.prefill_context(PASSAGES, "kvzip", ratio=0.5)
    shapes = []
    handle = smol.model.model.register_forward_pre_hook(
        lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        batch = ctx.ask_batch([QUESTION, OTHER], GenerationConfig(max_new_tokens=3))
    finally:
        handle.remove()
    steps = max(len(g.token_ids) for g in batch) - 1
    assert shapes[0][0] == 2 and shapes[0][1] > 1 and shapes[1:] == [(2, 1)] * steps
    with pytest.raises(ConfigError, match="tokens after the shared"):
        smol.decode_shared([ctx.prompt(QUESTION)], ctx.layers, ctx.masks, len(ctx.prompt(QUESTION)), [{}])


def test_a_question_prompt_is_the_generators_own_prompt(smol):
    """The context's prompts, tokenised from the question on (ragcore.prompt.extend_prompt), equal the generator's
    full prompts; a generator with its own prompt layout gets its own prompts."""
    ctx = smol.prefill_context(PASSAGES, "none")
    for q in (QUESTION, OTHER, "  spaced  ", "日本?"):
        got, want = ctx.prompt(q), smol.prompt(q, PASSAGES)
        assert got.input_ids.equal(want.input_ids) and got.spans == want.spans and got.offsets == want.offsets

    class Custom(type(smol)):
        def prompt(self, question, passages=None, system=None, answer_prefix=None):
            return super().prompt(question.upper(), passages, system, answer_prefix)

    custom = copy.copy(smol)
    custom.__class__ = Custom
    ctx2 = custom.prefill_context(PASSAGES, "none")
    assert QUESTION.upper() in ctx2.prompt(QUESTION).text


def test_a_context_saved_in_one_precision_loads_into_another(smol, tmp_path):
    """Saved by a float32 generator (CPU), loaded by a bfloat16 one (as on CUDA): the keys and values take the
    model's dtype and both ways of asking answer."""
    from ragcore.generator import Generator

    ctx = smol.prefill_context(PASSAGES, "snapkv", ratio=0.5)
    ctx.save(tmp_path / "c")
    bf16 = Generator("smollm2-135m", device="cpu", dtype="bfloat16")
    loaded = CompressedContext.load(tmp_path / "c", bf16)
    assert {k.dtype for k, _ in loaded.layers} == {torch.bfloat16}
    cfg = GenerationConfig(max_new_tokens=3)
    assert loaded.ask(QUESTION, cfg).token_ids and len(loaded.ask_batch([QUESTION, OTHER], cfg)) == 2


def test_ask_batch_refuses_one_string(smol):
    ctx = smol.prefill_context(PASSAGES, "none")
    with pytest.raises(ConfigError, match="list of questions"):
        ctx.ask_batch(QUESTION)


def test_max_time_counts_from_the_call_in_every_path(smol):
    """A wall-clock limit of half the prompt's prefill stops every path after its first token (the batched ones
    once counted from after their prefills and went on for several)."""
    passages = PASSAGES * 8
    prompt = smol.prompt(QUESTION, passages)
    smol.generate(prompt, config=GenerationConfig(max_new_tokens=1))  # warm-up
    prefill = smol.generate(prompt, config=GenerationConfig(max_new_tokens=1)).prefill_s
    cfg = GenerationConfig(max_new_tokens=20, max_time=prefill / 2)
    ctx = smol.prefill_context(passages, "none")
    assert ctx.ask_batch([QUESTION], GenerationConfig(max_new_tokens=20))[0].stopped != "max_time"
    for g in (smol.generate(prompt, config=cfg), *smol.generate_batch([prompt], cfg)):
        assert g.stopped == "max_time" and len(g.token_ids) <= 1


def test_the_package_exports_every_public_name():
    """README's `CompressedContext.load(...)` works after `from ragcore import CompressedContext`."""
    import ragcore

    assert ragcore.CompressedContext is CompressedContext
    assert all(getattr(ragcore, name) is not None for name in ragcore.__all__)
