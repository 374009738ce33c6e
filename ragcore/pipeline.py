"""The Pipeline: retrieve, then generate an answer that lists its sources."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

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
    is listed as a source, in retrieval order.
    """

    def __init__(
        self,
        retriever: HybridRetriever | str | Path,
        generator: Generator | str = DEFAULT_GENERATOR,
        k: int = 5,
        config: GenerationConfig | None = None,
    ) -> None:
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
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
        g = self.generator.generate(question, passages, self.config)
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
        return Answer(question, g.text, citations, passages, self.generator.model_name, timings)
