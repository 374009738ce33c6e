"""The Pipeline: retrieve, then generate an answer that lists its sources."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from compress.kv.base import KVCompressor
from ragcore.errors import ConfigError
from ragcore.generator import GenerationConfig, Generator
from ragcore.models import DEFAULT_GENERATOR
from ragcore.types import Answer, Citation, ScoredChunk
from retrieval.hybrid import HybridRetriever

logger = logging.getLogger(__name__)
_CITE = re.compile(r"\[(\d+)\]")


class Pipeline:
    """``Pipeline(index=...).ask(question)`` -> ``Answer`` with citations.

    Citations are the passages the answer cites as ``[n]``; when it cites none, every passage in the prompt
    is listed as a source, in retrieval order. ``compressor`` (e.g. ``get_compressor("snapkv", ratio=0.5)`` from
    ``compress.kv``) compresses the generator's KV cache after the prefill, question-agnostic unless
    ``query_aware``; ``Answer.kv`` then says how many bytes the cache held.
    """

    def __init__(
        self,
        retriever: HybridRetriever | str | Path,
        generator: Generator | str = DEFAULT_GENERATOR,
        k: int = 5,
        config: GenerationConfig | None = None,
        compressor: KVCompressor | None = None,
        query_aware: bool = False,
    ) -> None:
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        if compressor is not None and not isinstance(compressor, KVCompressor):
            raise ConfigError(
                f"compressor must be a KV compressor (compress.kv.get_compressor('snapkv', ratio=0.5)), got {compressor!r}"
            )
        self.compressor, self.query_aware = compressor, bool(query_aware)
        self.retriever = retriever if isinstance(retriever, HybridRetriever) else HybridRetriever.load(retriever)
        self.generator = generator if isinstance(generator, Generator) else Generator(generator)
        self.k, self.config = k, config or GenerationConfig()

    def warm_up(self) -> None:
        self.retriever.warm_up()
        self.generator.warm_up()

    def retrieve(self, question: str) -> list[ScoredChunk]:
        return self.retriever.search(question, self.k)

    def ask(self, question: str) -> Answer:
        t0 = time.perf_counter()
        passages = self.retrieve(question)
        t1 = time.perf_counter()
        g = self.generator.generate(
            question, passages, self.config, compressor=self.compressor, query_aware=self.query_aware
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
        kv = {k: g.stats[k] for k in ("kv_bytes", "kv_bytes_full", "masks_only") if k in g.stats}
        kv["compressor"] = self.compressor.label if self.compressor is not None else "none"
        if self.compressor is not None:
            kv["query_aware"] = self.query_aware
        return Answer(question, g.text, citations, passages, self.generator.model_name, timings, kv)
