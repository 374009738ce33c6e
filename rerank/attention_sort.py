"""Attention sorting (Peysakhovich & Lerer 2023, arXiv 2310.01427): let the model say which passages it reads.

Each of ``rounds`` rounds prefills the prompt with the passages in the current order and takes the attention that
the decoding position (the prompt's last token, which produces the first answer token) pays to each passage,
summed over the passage's tokens and averaged over layers and heads; the passages are then sorted by it, highest
last (next to the question), and the next round starts from that order. Results: docs/RESULTS.md, ``position``.

Two options come from in-context reranking (ICR, Chen et al. 2024, "Attention in Large Language Models Yields
Efficient Zero-Shot Re-Rankers", arXiv 2410.02642): ``query="question"`` reads the attention of the question's
tokens instead of the decoding position's, and ``calibration="na"`` subtracts, per passage, the attention the same
rows pay it when the question is the content-free "N/A" (same passages, same order). A model's attention to a
passage depends much on its slot (docs/RESULTS.md ``attn-profile-gpu``: qwen2.5-0.5b reads the first and last
slots most, whatever they hold); the calibration takes that part out, one more prefill per round.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ragcore.stages import Stage, option
from ragcore.types import ScoredChunk
from rerank.attnrank import slot_attention

logger = logging.getLogger(__name__)

#: ICR's content-free query (arXiv 2410.02642, section 3): the question that calibration puts in place of the real one
CONTENT_FREE = "N/A"


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
    query : {"last", "question"}
        Whose attention scores a passage: the decoding position (``"last"``, the paper) or the question's tokens,
        averaged over them (``"question"``, ICR; the prompt's question span, ``"Question: ...\nAnswer:"``, its
        template words included).
    calibration : {"none", "na"}
        ``"na"``: subtract each passage's attention under the content-free question "N/A" (ICR's calibration, one
        more prefill per round), which removes what the passage's slot alone draws. Asked "N/A" itself, every
        score is 0: the order is kept, with a warning, and nothing is prefilled.

    ``scores[name]`` holds the last round's score of each passage (attention mass, a fraction of the row's
    attention; calibrated: a difference of two such fractions).

    Measured (qwen2.5-0.5b, NQ-open, 10 passages): the defaults are the paper's; chosen on the development slice
    among six settings (docs/RESULTS.md ``attention-sort-icr-dev-gpu``), ``place="first", query="question",
    calibration="na"`` answered 9.0 points [6.7, 11.3] more than the retrieval order on 300 fresh questions per
    gold position (``position-icr-gpu``), where the paper's setting had gained +0.6 to +1.3 (``position-gpu``,
    ``position-fresh-gpu``). Cost: 4 prefills per query at 2 rounds (2 uncalibrated).
    """

    name: ClassVar[str] = "attention_sort"
    rounds: int = option(2, minimum=1)
    place: str = option("last", choices=("last", "first"))
    query: str = option("last", choices=("last", "question"))
    calibration: str = option("none", choices=("none", "na"))

    def scores(self, question: str, passages: Sequence[ScoredChunk], lm: Any) -> list[float]:
        """The attention mass each passage gets in the prompt of ``passages`` in this order (calibrated if asked),
        averaged over layers and heads; one float per passage."""
        mass = slot_attention(lm, question, passages, rows=self.query).mean(0)
        if self.calibration == "na":
            mass = mass - slot_attention(lm, CONTENT_FREE, passages, rows=self.query).mean(0)
        return [float(m) for m in mass]

    def rerank(self, question: str, passages: Sequence[ScoredChunk], lm: Any) -> list[ScoredChunk]:
        current = [ScoredChunk(p.chunk, dict(p.scores), p.rank) for p in passages]
        if len(current) < 2:
            return current
        if self.calibration == "na" and isinstance(question, str) and question.strip() == CONTENT_FREE:
            logger.warning(
                "attention_sort: the question is the content-free %r its calibration subtracts: every score is 0, "
                "the order is kept",
                CONTENT_FREE,
            )
            for p in current:
                p.scores[self.name] = 0.0
            return current
        sign = 1.0 if self.place == "last" else -1.0
        for _ in range(self.rounds):
            mass = self.scores(question, current, lm)
            for p, m in zip(current, mass):
                p.scores[self.name] = m
            current = [
                current[i] for i in sorted(range(len(current)), key=lambda i: sign * mass[i])
            ]  # stable: ties keep
        return current
