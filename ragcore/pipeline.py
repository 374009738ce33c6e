"""The Pipeline: retrieve, (rerank), (compress the context), generate with a (compressed) KV cache, and cite.

Typed against the stage protocols of :mod:`ragcore.stages`; concrete stages are built by name through
:mod:`ragcore.registry`, so this module imports nothing above ``ragcore``.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import inspect
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ragcore.errors import ConfigError, RagcoreError, StageError
from ragcore.events import CitationEvent, DoneEvent, Event, RetrievalEvent, TokenEvent
from ragcore.generator import Generation, GenerationConfig, Generator
from ragcore.models import DEFAULT_GENERATOR
from ragcore.prompt import Prompt
from ragcore.registry import registry
from ragcore.stages import ContextCompressor, Detector, KVCompressor, Reranker, Retriever, Tracer
from ragcore.types import Answer, Chunk, Citation, Flag, ScoredChunk, StageReport

if TYPE_CHECKING:
    from ragcore.config import PipelineConfig
    from ragcore.context_cache import CompressedContext

_CITE = re.compile(r"\[(\d+)\]")
_WRITE = threading.Lock()
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


def relevance_order(passages: Sequence[Chunk | ScoredChunk]) -> list[int]:
    """Indices of ``passages``, the most relevant first: by retrieval rank (``ScoredChunk.rank``, 1 = best, kept by
    rerankers and context compressors; 0 = unknown, after every ranked one), then by position."""
    return sorted(range(len(passages)), key=lambda i: (getattr(passages[i], "rank", 0) or math.inf, i))


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
        the prefill. ``Answer.kv`` then says how many bytes it held.
    query_aware:
        Compress after reading the question (the default: one question is asked, and the methods reach their
        targets only when they read it first). ``False`` compresses the context alone; to answer several questions
        from one compressed context use :meth:`compress_context`.
    reranker:
        A reranker or its spec string: the order the generator reads the passages in.
    context_compressor:
        A context compressor or its spec string: which text of the passages the generator reads.
    tracer:
        A tracer or its spec string (``"attntrace"``), or True for the interactive setting
        (``ragcore.attribution.INTERACTIVE_TRACER``): ``Answer.sentences`` then cites, per answer sentence, the
        passages and source spans the tracer found, and ``Answer.citations`` are those passages.
    detector:
        A detector or its spec string (``"rules"``, ``"judge"``): run on the tracer's top-K segments only;
        ``Answer.flags`` lists what it flagged and why. Implies the interactive tracer when none is given.
    defend:
        Drop the passages holding a flagged segment and answer again (needs a detector; default ``rules``).

    Every stage is optional but the retriever and the generator; each reports its seconds and counts in
    ``Answer.stages``, and a failing stage is named in the error. Citations are the passages the answer cites as
    ``[n]``; when it cites none, every passage in the prompt is listed, in prompt order. Passages that do not fit
    the model's context window (with room for ``config.max_new_tokens``) are dropped, the least relevant first (by
    retrieval rank, wherever a reranker placed them), and listed in ``Answer.dropped`` (by retrieval rank, the
    most relevant first). A reranker reads only the passages that fit; the others follow its order unread (for a
    context compressor to condense, or to be dropped).
    """

    def __init__(
        self,
        retriever: Retriever | str | Path,
        generator: Generator | str = DEFAULT_GENERATOR,
        k: int = 5,
        config: GenerationConfig | None = None,
        compressor: KVCompressor | str | None = None,
        query_aware: bool = True,
        reranker: Reranker | str | None = None,
        context_compressor: ContextCompressor | str | None = None,
        tracer: Tracer | str | bool | None = None,
        detector: Detector | str | None = None,
        defend: bool = False,
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
        self.index: Path | None = None  # the index folder, when the retriever was loaded from one
        self.max_tokens: int | None = None  # prompt + answer token budget (None: the model's window)
        self.tracer, self.detector, self.defend = attribution_stages(tracer, detector, defend)
        if isinstance(retriever, (str, Path)):
            self.index = Path(retriever)
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
        """Retrieve, rerank and compress the context: the passages the generator will read, in order.

        The reranker reads only the most relevant passages (by retrieval rank) that fit the window (an
        attention-driven order runs the model on them; a longer prompt would be read past the window); the others
        follow its order unread, most relevant first, for a context compressor to condense or the window fit to
        drop."""
        passages, rep = run_stage("retriever", self.retriever, lambda: self.retrieve(question), reports)
        rep.items_out = len(passages)
        lm = self.generator
        if self.reranker is not None:
            _, before, unread = self.fit(question, passages)
            reordered, rep = run_stage(
                "reranker", self.reranker, lambda: self.reranker.rerank(question, before, lm), reports
            )
            passages = reordered + unread
            rep.items_in, rep.items_out = len(before), len(reordered)
            rep.details["order"] = [p.chunk.id for p in reordered]
            if unread:
                rep.details["unread"] = [p.chunk.id for p in unread]
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
        passages, dropped, prompt = self.prompt_for(question, reports)
        g, rep = self.generate(prompt, reports)
        return self.answer(question, passages, dropped, g, rep, reports, prompt)

    def generate(self, prompt: Prompt | list[Prompt], reports: list[StageReport]) -> tuple[Any, StageReport]:
        """The generator stage on one prompt (a ``Generation``) or several decoded together (a list), with the
        pipeline's decoding settings and KV compressor; its report is appended to ``reports``."""
        lm = self.generator
        fn = lm.generate_batch if isinstance(prompt, list) else lm.generate
        return run_stage(
            "generator",
            lm,
            lambda: fn(prompt, config=self.config, compressor=self.compressor, query_aware=self.query_aware),
            reports,
        )

    def prompt_for(
        self, question: str, reports: list[StageReport]
    ) -> tuple[list[ScoredChunk], list[ScoredChunk], Prompt]:
        """The passages that fit the window (``max_tokens``, if set, or the model's), in the order the stages chose,
        those dropped (the least relevant by retrieval rank, wherever a reranker put them; listed the most relevant
        first, as ``Answer.dropped``), the prompt."""
        prompt, kept, dropped = self.fit(question, self.passages(question, reports))
        return kept, dropped, prompt

    def fit(self, question: str, passages: list[ScoredChunk]) -> tuple[Prompt, list[ScoredChunk], list[ScoredChunk]]:
        """The prompt of the most relevant ``passages`` (by retrieval rank, :func:`relevance_order`) that fit the
        window (``max_tokens``, if set, or the model's, with room for the answer), those passages in their given
        order, and the others, the most relevant first. Raises ``PromptTooLongError`` (see
        ``Generator.fit_prompt``)."""
        prompt, kept = self.generator.fit_prompt(
            question,
            passages,
            self.config.max_new_tokens,
            max_tokens=self.max_tokens,
            priority=relevance_order(passages),
        )
        held = {id(p) for p in kept}
        rest = [p for p in passages if id(p) not in held]
        return prompt, list(kept), [rest[i] for i in relevance_order(rest)]

    def answer(
        self,
        question: str,
        passages: list[ScoredChunk],
        dropped: list[ScoredChunk],
        g: Generation,
        rep: StageReport,
        reports: list[StageReport],
        prompt: Prompt | None = None,
    ) -> Answer:
        """The ``Answer`` of a generation ``g`` (its report ``rep`` completed, the KV compressor's added), traced
        from ``prompt`` (citations per sentence, flags) when the pipeline has a tracer."""
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
        answer = self._record(question, g, passages, kv, reports, dropped, reports[0].seconds)
        return answer if self.tracer is None or prompt is None else self._trace(answer, prompt, g, reports)

    def _trace(self, answer: Answer, prompt: Any, g: Any, reports: list[StageReport]) -> Answer:
        """Trace the answer (citations per sentence), run the detector on the top-K traced segments, and with
        ``defend`` drop the passages holding a flagged segment and answer again (traced again)."""
        lm = self.generator
        tr, rep = run_stage("tracer", self.tracer, lambda: self.tracer.trace(prompt, g, lm), reports)
        rep.items_in, rep.items_out = len(tr.segments), len(tr.sentences)
        rep.details = {"forwards": tr.forwards, "unit": self.tracer.unit, "citations": "tracer"}
        answer.sentences = tr.cite(prompt, self.tracer.threshold, self.tracer.top_k)
        answer.citations = traced_citations(answer)
        if self.detector is None:
            return answer
        top = tr.top(self.tracer.top_k)
        found, rep = run_stage(
            "detector", self.detector, lambda: self.detector.flag([tr.segments[j] for j in top], lm), reports
        )
        rep.items_in, rep.items_out = len(top), len(found)
        for f in found:
            seg = tr.segments[top[f.index]]
            chunk = prompt.passages[seg.passage]
            answer.flags.append(
                Flag(
                    self.detector.name,
                    f.reason,
                    seg.passage + 1,
                    chunk.id,
                    chunk.source_id,
                    chunk.start + seg.start,
                    chunk.start + seg.end,
                    seg.text,
                    f.score,
                    removed=self.defend,
                )
            )
        if not (self.defend and answer.flags):
            return answer
        bad = {f.chunk_id for f in answer.flags}
        passages = [p for p in answer.passages if p.chunk.id not in bad]
        prompt, kept, _ = self.fit(answer.question, passages)
        g, rep = self.generate(prompt, reports)
        rep.label, rep.details = lm.model_name, {"regenerated": True, "removed": sorted(bad)}
        tr, rep = run_stage("tracer", self.tracer, lambda: self.tracer.trace(prompt, g, lm), reports)
        rep.items_in, rep.items_out = len(tr.segments), len(tr.sentences)
        answer.text, answer.passages = g.text, list(kept)
        answer.dropped += sorted(bad)
        answer.sentences = tr.cite(prompt, self.tracer.threshold, self.tracer.top_k)
        answer.citations = traced_citations(answer)
        return answer

    def _record(
        self,
        question: str,
        g: Generation,
        passages: list[ScoredChunk],
        kv: dict[str, Any],
        reports: list[StageReport],
        dropped: Sequence[ScoredChunk] = (),
        retrieve_s: float = 0.0,
    ) -> Answer:
        """The ``Answer`` of generation ``g`` from ``passages``, cited by its ``[n]`` markers."""
        timings = {"retrieve_s": retrieve_s, "prefill_s": g.prefill_s, "decode_s": g.decode_s}
        cited = self.cite(passages, g.text)
        dropped_ids = [p.chunk.id for p in dropped]
        return Answer(question, g.text, cited, passages, self.generator.model_name, timings, kv, dropped_ids, reports)

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

    # ---- from a config; streaming, batches, async; documents (issue 15) ----------------------------------------
    @classmethod
    def from_config(cls, cfg: PipelineConfig | None = None, generator: Generator | None = None) -> Pipeline:
        """The pipeline a :class:`ragcore.config.PipelineConfig` describes (default: the config from the
        environment). ``generator``: an already loaded generator to use instead of loading ``cfg.generator``.
        Tracer and detector stages are passed on when the config names them; this build refuses them with a
        ``ConfigError`` if its Pipeline has no such stage."""
        from ragcore.config import PipelineConfig
        from ragcore.registry import parse_spec

        cfg = cfg or PipelineConfig.load()
        name, options, _ = parse_spec(cfg.retriever, "retriever")
        retriever = load_retriever(cfg.index, name, **options)
        gen = generator or Generator(cfg.generator, cfg.device)
        gcfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, max_time=cfg.max_time)
        extra: dict[str, Any] = {}
        for kind in ("tracer", "detector"):
            spec = getattr(cfg, kind)
            if spec is not None:
                if kind not in inspect.signature(cls).parameters:
                    raise ConfigError(f"{kind} {spec!r}: this build of the Pipeline has no {kind} stage", param=kind)
                extra[kind] = spec
        p = cls(
            retriever,
            gen,
            cfg.k,
            gcfg,
            compressor=cfg.kv_compressor,
            query_aware=cfg.query_aware,
            reranker=cfg.reranker,
            context_compressor=cfg.context_compressor,
            **extra,
        )
        p.index, p.max_tokens, p.lock_timeout = Path(cfg.index), cfg.max_prompt_tokens, cfg.lock_timeout
        return p

    def with_options(self, k: int | None = None, max_new_tokens: int | None = None) -> Pipeline:
        """A copy sharing every stage and model, with another ``k`` or answer length (one request's options)."""
        p = copy.copy(self)
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ConfigError(f"k must be a positive integer, got {k!r}", param="k")
            p.k = k
        if max_new_tokens is not None:
            p.config = dataclasses.replace(self.config, max_new_tokens=max_new_tokens)
        return p

    def stream(self, question: str) -> Iterator[Event]:
        """Answer ``question`` as events: ``retrieval``, ``token`` (many), ``citation`` (one per cited passage),
        ``done`` (the ``Answer``, equal to ``ask``'s). Closing the iterator stops the generation."""
        reports: list[StageReport] = []
        passages, dropped, prompt = self.prompt_for(question, reports)
        yield RetrievalEvent(passages, [p.chunk.id for p in dropped])
        name = "generator"
        pieces = self.generator.stream(
            prompt, config=self.config, compressor=self.compressor, query_aware=self.query_aware
        )
        t0 = time.perf_counter()
        while True:
            try:
                piece = next(pieces)
            except StopIteration as done:
                g = done.value
                break
            except RagcoreError as e:
                e.args = (f"generator {name!r}: {e}", *e.args[1:])
                raise
            except Exception as e:
                raise StageError(f"generator {name!r} failed: {type(e).__name__}: {e}") from e
            if piece:
                yield TokenEvent(piece)
        rep = StageReport("generator", name, self.generator.model_name, time.perf_counter() - t0)
        reports.append(rep)
        answer = self.answer(question, passages, dropped, g, rep, reports, prompt)
        for c in answer.citations:
            yield CitationEvent(c)
        yield DoneEvent(answer)

    def ask_batch(self, questions: Sequence[str]) -> list[Answer]:
        """Answer several questions: each is retrieved and prompted on its own, then all decode together
        (``Generator.generate_batch``: the same greedy answers as ``ask`` in float32; in bfloat16 a token can
        differ now and then)."""
        questions = list(questions)
        if not questions:
            return []
        parts, prompts = [], []
        for q in questions:
            reports: list[StageReport] = []
            passages, dropped, prompt = self.prompt_for(q, reports)
            parts.append((q, passages, dropped, reports, prompt))
            prompts.append(prompt)
        batch: list[StageReport] = []
        gens, rep = self.generate(prompts, batch)
        out = []
        for (q, passages, dropped, reports, prompt), g in zip(parts, gens):
            mine = dataclasses.replace(rep, details={})
            reports.append(mine)
            out.append(self.answer(q, passages, dropped, g, mine, reports, prompt))
        return out

    async def aask(self, question: str) -> Answer:
        """``ask`` in a worker thread, so an event loop stays free."""
        return await asyncio.to_thread(self.ask, question)

    async def aask_batch(self, questions: Sequence[str]) -> list[Answer]:
        return await asyncio.to_thread(self.ask_batch, questions)

    async def astream(self, question: str) -> AsyncIterator[Event]:
        """``stream`` run in a worker thread, its events handed to the event loop as they come; when the consumer
        stops early (a client went away), the generation stops at its next token."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def work() -> None:
            events = self.stream(question)
            try:
                for ev in events:
                    loop.call_soon_threadsafe(queue.put_nowait, ("event", ev))
                    if stop.is_set():
                        break
            except BaseException as e:  # handed to the consumer, raised there
                loop.call_soon_threadsafe(queue.put_nowait, ("error", e))
            finally:
                events.close()
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))

        task = loop.run_in_executor(None, work)
        try:
            while True:
                what, item = await queue.get()
                if what == "end":
                    break
                if what == "error":
                    raise item
                yield item
        finally:
            stop.set()
            await asyncio.shield(task)

    def add_documents(self, documents: Iterable[Any]) -> Any:
        """Add or replace sources in the pipeline's index and search the new version from now on.

        ``documents``: paths of files, ``ragcore.documents.Document`` objects, or dicts with ``source_id`` and
        ``text`` (or ``data`` bytes and a ``filename`` giving the type). The new version is written atomically
        under the index's writer lock; returns the ``SyncReport``."""
        from retrieval.indexer import document, ingest

        docs = []
        for d in documents:
            if isinstance(d, (str, Path)):
                docs.append(document(str(d), data=Path(d).read_bytes(), filename=str(d)))
            elif isinstance(d, dict):
                docs.append(document(d.get("source_id", ""), d.get("text"), d.get("data"), d.get("filename")))
            else:
                docs.append(d)
        return self._write(lambda: ingest(self.index_path(), docs, like=self.retriever, lock_timeout=self._lock_s()))

    def remove_source(self, source_id: str) -> Any:
        """Remove one source from the pipeline's index (a new version, atomically); returns the ``SyncReport``.
        ``SourceNotFoundError`` when the index has no such source."""
        from retrieval.indexer import ingest

        return self._write(
            lambda: ingest(self.index_path(), remove=[source_id], like=self.retriever, lock_timeout=self._lock_s())
        )

    def index_path(self) -> Path:
        """The index folder this pipeline's retriever was loaded from (``ConfigError`` when it was given ready)."""
        if self.index is None:
            raise ConfigError("this pipeline's retriever was not loaded from an index folder", param="index")
        return self.index

    def _lock_s(self) -> float:
        return getattr(self, "lock_timeout", 30.0)

    def _write(self, fn: Callable[[], tuple[Any, Retriever]]) -> Any:
        with _WRITE:  # one writer per process; the index's file lock keeps other processes out
            report, retriever = fn()
            self.retriever = retriever  # searches already running finish on the version they started with
        return report

    def compress_context(
        self,
        passages_or_question: str | list[Any],
        compressor: KVCompressor | str | None = None,
        ratio: float | None = None,
    ) -> CompressedContext:
        """Prefill and compress a context once, question-agnostic, to answer many questions from it
        (:meth:`ask_context`, or ``ctx.ask``); returns a :class:`ragcore.context_cache.CompressedContext`.

        ``passages_or_question``: the passages (``Chunk`` or ``ScoredChunk``), or a question whose retrieved (and
        reranked, compressed) passages make the context, fitted to the model's window (or ``max_tokens``). ``compressor``: a KV
        compressor or its spec string, default ``compress.kv.DEFAULT_AGNOSTIC`` (at ``ratio``, default
        ``compress.kv.DEFAULT_AGNOSTIC_RATIO``)."""
        passages: list[Any]
        if isinstance(passages_or_question, str):
            _, passages, _ = self.fit(passages_or_question, self.passages(passages_or_question, []))
        else:
            passages = list(passages_or_question)
        return self.generator.prefill_context(passages, compressor, ratio=ratio)

    def ask_context(self, ctx: CompressedContext, question: str) -> Answer:
        """Answer ``question`` from a compressed context (:meth:`compress_context`), with citations."""
        t0 = time.perf_counter()
        g = ctx.ask(question, self.config)
        passages = [ScoredChunk(c, rank=i + 1) for i, c in enumerate(ctx.passages)]
        kv = {key: g.stats[key] for key in ("kv_bytes", "kv_bytes_full", "masks_only", "compressor")}
        kv["query_aware"] = False
        report = StageReport("generator", "generator", self.generator.model_name, time.perf_counter() - t0)
        report.items_in, report.items_out = g.prompt_tokens, len(g.token_ids)
        return self._record(question, g, passages, kv, [report])


def attribution_stages(tracer: Any, detector: Any, defend: bool) -> tuple[Any, Any, bool]:
    """The tracer, detector and defence a Pipeline runs: a detector or the defence implies the interactive
    tracer, the defence implies the default detector."""
    from ragcore.attribution import DEFAULT_DETECTOR, INTERACTIVE_TRACER

    if not isinstance(defend, bool):
        raise ConfigError(f"defend must be True or False, got {defend!r}")
    if defend and detector is None:
        detector = DEFAULT_DETECTOR
    if tracer is True or (tracer in (None, False) and detector is not None):
        tracer = INTERACTIVE_TRACER
    return _stage("tracer", tracer or None, Tracer), _stage("detector", detector, Detector), defend


def traced_citations(answer: Answer) -> list[Citation]:
    """The passages the answer's sentences cite, in order of first citation, each with its best score."""
    best: dict[int, float] = {}
    for s in answer.sentences:
        for c in s.citations:
            best[c.number] = max(best.get(c.number, 0.0), c.score)
    out = []
    for n, score in best.items():
        chunk = answer.passages[n - 1].chunk
        out.append(Citation(n, chunk.id, chunk.source_id, chunk.start, chunk.end, score, chunk.text))
    return out
