"""Attention sorting (Peysakhovich & Lerer 2023, arXiv 2310.01427): let the model say which passages it reads.

Each of ``rounds`` rounds prefills the prompt with the passages in the current order and takes the attention that
the decoding position (the prompt's last token, which produces the first answer token) pays to each passage,
summed over the passage's tokens and averaged over layers and heads; the passages are then sorted by it, highest
last (next to the question), and the next round starts from that order. Results: docs/RESULTS.md, ``position``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ragcore.attention import attention_to_spans
from ragcore.stages import Stage, option
from ragcore.types import ScoredChunk


@dataclass
class AttentionSort(Stage):
    """Attention sorting: ``rounds`` rounds of prefill + one decoding step, passages sorted by the attention the
    decoding position pays them, highest last.

    Parameters
    ----------
    rounds : int
        Sorting rounds (the paper's T; default 2).
    place : {"last", "first"}
        Where the most attended passage goes: ``"last"``, next to the question (the paper, for models that favour
        recent text), or ``"first"`` (for models that favour the start of the prompt: qwen2.5-0.5b answers best
        with the gold passage first, docs/RESULTS.md ``position-gpu``); each round measures the order it is given.
    """

    name: ClassVar[str] = "attention_sort"
    rounds: int = option(2, minimum=1)
    place: str = option("last", choices=("last", "first"))

    def rerank(self, question: str, passages: Sequence[ScoredChunk], lm: Any) -> list[ScoredChunk]:
        current = [ScoredChunk(p.chunk, dict(p.scores), p.rank) for p in passages]
        if len(current) < 2:
            return current
        for _ in range(self.rounds):
            prompt = lm.prompt(question, current)
            att = attention_to_spans(lm.model, prompt.input_ids, prompt.spans, rows="last")
            mass = [float(att.spans[f"passage:{i + 1}"].mean()) for i in range(len(current))]
            for p, m in zip(current, mass):
                p.scores[self.name] = m
            sign = 1.0 if self.place == "last" else -1.0
            current = [
                current[i] for i in sorted(range(len(current)), key=lambda i: sign * mass[i])
            ]  # stable: ties keep
        return current
