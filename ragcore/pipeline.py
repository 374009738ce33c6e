"""The Pipeline: retrieve, then generate an answer that lists its sources.

Typed against the stage protocols of :mod:`ragcore.stages`; concrete stages are built by name through
:mod:`ragcore.registry`, so this module imports nothing above ``ragcore``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from ragcore.errors import ConfigError
from ragcore.generator import GenerationConfig, Generator
from ragcore.models import DEFAULT_GENERATOR
from ragcore.registry import registry
from ragcore.stages import KVCompressor, Retriever
from ragcore.types import Answer, Citation, ScoredChunk

_CITE = re.compile(r"\[(\d+)\]")


def load_retriever(index: str | Path, name: str = "hybrid", **options: Any) -> Retriever:
    """The registered retriever ``name`` loaded from the index folder ``index``."""
    return registry("retriever")[name].load(index, **options)


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

    Citations are the passages the answer cites as ``[n]``; when it cites none, every passage in the prompt is
    listed as a source, in retrieval order. Passages that do not fit the model's context window (with room for
    ``config.max_new_tokens``) are dropped from the end and listed in ``Answer.dropped``.
    """

    def __init__(
        self,
        retriever: Retriever | str | Path,
        generator: Generator | str = DEFAULT_GENERATOR,
        k: int = 5,
        config: GenerationConfig | None = None,
        compressor: KVCompressor | str | None = None,
        query_aware: bool = False,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        if isinstance(compressor, str):
            compressor = registry("kv_compressor").build(compressor)
        if compressor is not None and not isinstance(compressor, KVCompressor):
            raise ConfigError(
                f"compressor must be a KV compressor or its spec string (e.g. 'snapkv(ratio=0.5)'), got {compressor!r}"
            )
        if isinstance(retriever, (str, Path)):
            retriever = load_retriever(retriever)
        if not isinstance(retriever, Retriever):
            raise ConfigError(f"retriever must have retrieve(question, k) or be an index path, got {retriever!r}")
        self.compressor, self.query_aware = compressor, bool(query_aware)
        self.retriever = retriever
        self.generator = generator if isinstance(generator, Generator) else Generator(generator)
        self.k, self.config = k, config or GenerationConfig()

    def warm_up(self) -> None:
        """Load every model the pipeline uses (idempotent)."""
        for stage in (self.retriever, self.generator):
            if hasattr(stage, "warm_up"):
                stage.warm_up()

    def retrieve(self, question: str) -> list[ScoredChunk]:
        return self.retriever.retrieve(question, self.k)

    def ask(self, question: str) -> Answer:
        """Retrieve, fit the passages to the model's window, generate and cite. Raises ``EmptyQueryError``,
        ``PromptTooLongError`` (the question alone does not fit) or a retriever's errors."""
        t0 = time.perf_counter()
        passages = self.retrieve(question)
        t1 = time.perf_counter()
        prompt, kept = self.generator.fit_prompt(question, passages, self.config.max_new_tokens)
        dropped, passages = passages[len(kept) :], passages[: len(kept)]
        g = self.generator.generate(
            prompt, config=self.config, compressor=self.compressor, query_aware=self.query_aware
        )
        cited = {int(n) for n in _CITE.findall(g.text) if 1 <= int(n) <= len(passages)}
        numbers = sorted(cited) if cited else range(1, len(passages) + 1)
        citations = [
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
        timings = {"retrieve_s": t1 - t0, "prefill_s": g.prefill_s, "decode_s": g.decode_s}
        kv = {key: g.stats[key] for key in ("kv_bytes", "kv_bytes_full", "masks_only") if key in g.stats}
        kv["compressor"] = self.compressor.label if self.compressor is not None else "none"
        if self.compressor is not None:
            kv["query_aware"] = self.query_aware
        return Answer(
            question,
            g.text,
            citations,
            passages,
            self.generator.model_name,
            timings,
            kv,
            dropped=[p.chunk.id for p in dropped],
        )
