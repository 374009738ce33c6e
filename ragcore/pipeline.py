"""The Pipeline: retrieve, (rerank), (compress the context), generate with a (compressed) KV cache, and cite.

Typed against the stage protocols of :mod:`ragcore.stages`; concrete stages are built by name through
:mod:`ragcore.registry`, so this module imports nothing above ``ragcore``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ragcore.errors import ConfigError, RagcoreError, StageError
from ragcore.generator import GenerationConfig, Generator
from ragcore.models import DEFAULT_GENERATOR
from ragcore.registry import registry
from ragcore.stages import ContextCompressor, KVCompressor, Reranker, Retriever
from ragcore.types import Answer, Citation, ScoredChunk, StageReport

_CITE = re.compile(r"\[(\d+)\]")
R = TypeVar("R")


def load_retriever(index: str | Path, name: str = "hybrid", **options: Any) -> Retriever:
    """The registered retriever ``name`` loaded from the index folder ``index``."""
    return registry("retriever")[name].load(index, **options)


def _stage(kind: str, stage: Any, protocol: type) -> Any:
    """``stage`` built from its spec string when it is one, checked against the kind's protocol."""
    if stage is None:
        return None
    if isinstance(stage, str):
        stage = registry(kind).build(stage)
    if not isinstance(stage, protocol):
        raise ConfigError(f"{kind} must be a {kind} stage or its spec string, got {stage!r}")
    return stage


def run_stage(kind: str, stage: Any, fn: Callable[[], R], reports: list[StageReport]) -> tuple[R, StageReport]:
    """Run one stage's call, time it and append its report; a failure is re-raised as ``StageError`` naming the
    stage (a ``RagcoreError`` keeps its own type and gains the stage's name in its message)."""
    name = getattr(stage, "name", type(stage).__name__)
    t0 = time.perf_counter()
    try:
        out = fn()
    except RagcoreError as e:
        e.args = (f"{kind} {name!r}: {e}", *e.args[1:])
        raise
    except Exception as e:
        raise StageError(f"{kind} {name!r} failed: {type(e).__name__}: {e}") from e
    label = getattr(stage, "label", name)
    report = StageReport(kind, name, label if isinstance(label, str) else name, time.perf_counter() - t0)
    reports.append(report)
    return out, report


def _tokens(lm: Generator, passages: list[ScoredChunk]) -> int | None:
    """Tokens of the passages' texts in the generator's tokenizer (None without one)."""
    lm.warm_up()
    tok = lm.tokenizer
    if tok is None or not passages:
        return None if tok is None else 0
    return sum(len(ids) for ids in tok([p.chunk.text for p in passages], add_special_tokens=False)["input_ids"])


class Pipeline:
    """Retrieve, then answer with citations: ``Pipeline(retriever, generator).ask(question)`` -> ``Answer``.

    Parameters
    ----------
    retriever:
        A retriever stage (``retrieve(question, k)``), or the path of an index folder (loaded as ``hybrid``).
    generator:
        A :class:`Generator`, or a model name (``qwen2.5-0.5b``, ``smollm2-135m``, a local folder or ``.gguf``).
    k:
        Passages retrieved per question.
    config:
        Decoding settings.
    compressor:
        A KV compressor, or its spec string (``"snapkv(ratio=0.5)"``); compresses the generator's KV cache after
        the prefill, question-agnostic unless ``query_aware``. ``Answer.kv`` then says how many bytes it held.
    query_aware:
        Compress after reading the question.
    reranker:
        A reranker or its spec string: the order the generator reads the passages in.
    context_compressor:
        A context compressor or its spec string: which text of the passages the generator reads.

    Every stage is optional but the retriever and the generator; each reports its seconds and counts in
    ``Answer.stages``, and a failing stage is named in the error. Citations are the passages the answer cites as
    ``[n]``; when it cites none, every passage in the prompt is listed, in prompt order. Passages that do not fit
    the model's context window (with room for ``config.max_new_tokens``) are dropped from the end and listed in
    ``Answer.dropped``.
    """

    def __init__(
        self,
        retriever: Retriever | str | Path,
        generator: Generator | str = DEFAULT_GENERATOR,
        k: int = 5,
        config: GenerationConfig | None = None,
        compressor: KVCompressor | str | None = None,
        query_aware: bool = False,
        reranker: Reranker | str | None = None,
        context_compressor: ContextCompressor | str | None = None,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        if compressor is not None and not isinstance(compressor, (str, KVCompressor)):
            raise ConfigError(
                f"compressor must be a KV compressor or its spec string (e.g. 'snapkv(ratio=0.5)'), got {compressor!r}"
            )
        self.compressor = _stage("kv_compressor", compressor, KVCompressor)
        self.reranker = _stage("reranker", reranker, Reranker)
        self.context_compressor = _stage("context_compressor", context_compressor, ContextCompressor)
        self.query_aware = bool(query_aware)
        if isinstance(retriever, (str, Path)):
            retriever = load_retriever(retriever)
        if not isinstance(retriever, Retriever):
            raise ConfigError(f"retriever must have retrieve(question, k) or be an index path, got {retriever!r}")
        self.retriever = retriever
        self.generator = generator if isinstance(generator, Generator) else Generator(generator)
        self.k, self.config = k, config or GenerationConfig()

    def warm_up(self) -> None:
        """Load every model the pipeline uses (idempotent)."""
        for stage in (self.retriever, self.generator, self.reranker, self.context_compressor, self.compressor):
            if stage is not None and hasattr(stage, "warm_up"):
                stage.warm_up()

    def retrieve(self, question: str) -> list[ScoredChunk]:
        return self.retriever.retrieve(question, self.k)

    def passages(self, question: str, reports: list[StageReport]) -> list[ScoredChunk]:
        """Retrieve, rerank and compress the context: the passages the generator will read, in order."""
        passages, rep = run_stage("retriever", self.retriever, lambda: self.retrieve(question), reports)
        rep.items_out = len(passages)
        lm = self.generator
        if self.reranker is not None:
            before = passages
            passages, rep = run_stage(
                "reranker", self.reranker, lambda: self.reranker.rerank(question, before, lm), reports
            )
            rep.items_in, rep.items_out = len(before), len(passages)
            rep.details["order"] = [p.chunk.id for p in passages]
        if self.context_compressor is not None:
            before = passages
            passages, rep = run_stage(
                "context_compressor",
                self.context_compressor,
                lambda: self.context_compressor.compress(question, before, lm),
                reports,
            )
            rep.items_in, rep.items_out = len(before), len(passages)
            rep.details["chars_in"] = sum(len(p.chunk.text) for p in before)
            rep.details["chars_out"] = sum(len(p.chunk.text) for p in passages)
            rep.details["tokens_in"], rep.details["tokens_out"] = _tokens(lm, before), _tokens(lm, passages)
        return passages

    def ask(self, question: str) -> Answer:
        """Retrieve, fit the passages to the model's window, generate and cite. Raises ``EmptyQueryError``,
        ``PromptTooLongError`` (the question alone does not fit), or a stage's error naming the stage."""
        reports: list[StageReport] = []
        passages = self.passages(question, reports)
        prompt, kept = self.generator.fit_prompt(question, passages, self.config.max_new_tokens)
        dropped, passages = passages[len(kept) :], passages[: len(kept)]
        g, rep = run_stage(
            "generator",
            self.generator,
            lambda: self.generator.generate(
                prompt, config=self.config, compressor=self.compressor, query_aware=self.query_aware
            ),
            reports,
        )
        rep.label = self.generator.model_name
        rep.items_in, rep.items_out = g.prompt_tokens, len(g.token_ids)
        rep.details = {"prefill_s": g.prefill_s, "decode_s": g.decode_s, "stopped": g.stopped}
        kv = {key: g.stats[key] for key in ("kv_bytes", "kv_bytes_full", "masks_only") if key in g.stats}
        kv["compressor"] = self.compressor.label if self.compressor is not None else "none"
        if self.compressor is not None:
            kv["query_aware"] = self.query_aware
            reports.append(
                StageReport(
                    "kv_compressor",
                    self.compressor.name,
                    self.compressor.label,
                    g.stats.get("context_prefill_s", 0.0),
                    details=dict(kv),
                )
            )
        timings = {"retrieve_s": reports[0].seconds, "prefill_s": g.prefill_s, "decode_s": g.decode_s}
        return Answer(
            question,
            g.text,
            self.cite(passages, g.text),
            passages,
            self.generator.model_name,
            timings,
            kv,
            dropped=[p.chunk.id for p in dropped],
            stages=reports,
        )

    @staticmethod
    def cite(passages: list[ScoredChunk], text: str) -> list[Citation]:
        """The passages ``text`` cites as ``[n]``, or every passage when it cites none."""
        cited = {int(n) for n in _CITE.findall(text) if 1 <= int(n) <= len(passages)}
        numbers = sorted(cited) if cited else range(1, len(passages) + 1)
        return [
            Citation(
                number=n,
                chunk_id=passages[n - 1].chunk.id,
                source_id=passages[n - 1].chunk.source_id,
                start=passages[n - 1].chunk.start,
                end=passages[n - 1].chunk.end,
                score=passages[n - 1].score,
                text=passages[n - 1].chunk.text,
            )
            for n in numbers
        ]
