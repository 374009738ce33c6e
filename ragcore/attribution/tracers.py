"""Tracers: which context segments caused an answer, scored per answer sentence.

* :class:`AttnTrace` (``attntrace``): attention of the answer tokens to the context, recomputed through
  :mod:`ragcore.attention` on random subsamples of the segments, top-k token averaging.
* :class:`RawAttention` (``attention``): the same attention on the whole context once, summed per segment.
* :class:`LeaveOneOut` (``loo``): the drop in the answer's log-probability when one segment is removed.
* :class:`ContextCite` (``contextcite``): a sparse linear surrogate (scikit-learn LASSO) fit on random
  ablations; our in-process implementation of the method, not the ``context-cite`` package.

Every tracer returns a :class:`Trace`: a score for every segment, for the whole answer and for each of its
sentences; :meth:`Trace.cite` turns it into per-sentence citations with source character spans. Results:
docs/RESULTS.md, section "Attribution".
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from ragcore.attention import rows_attention_batch
from ragcore.attribution.segments import UNITS, Rebuilt, Segment, answer_sentences, rebuild_many, split
from ragcore.errors import ConfigError
from ragcore.stages import Stage, option
from ragcore.types import SentenceCitation, SourceSpan

if TYPE_CHECKING:
    from ragcore.generator import Generation, Generator
    from ragcore.prompt import Prompt


@dataclass
class Trace:
    """A tracer's result for one answer.

    Attributes
    ----------
    segments : list of Segment
        The context's segments, in prompt order.
    scores : numpy.ndarray
        (n_segments,) scores for the whole answer (higher: more responsible).
    sentence_scores : numpy.ndarray
        (n_sentences, n_segments) scores for each answer sentence.
    sentences : list of (int, int)
        Character spans of the answer sentences in ``answer``.
    answer : str
        The answer's text.
    method : str
        The tracer's label.
    seconds : float
        Wall-clock seconds of the trace.
    forwards : int
        Forward passes of the model it took.
    """

    segments: list[Segment]
    scores: np.ndarray
    sentence_scores: np.ndarray
    sentences: list[tuple[int, int]]
    answer: str
    method: str
    seconds: float = 0.0
    forwards: int = 0

    def top(self, k: int) -> list[int]:
        """Indices of the ``k`` best-scoring segments for the whole answer, best first (stable on ties)."""
        return [int(i) for i in np.argsort(-self.scores, kind="stable")[:k]]

    def cite(self, prompt: Prompt, threshold: float = 0.5, k: int = 5) -> list[SentenceCitation]:
        """Per answer sentence, the passages (at most ``k``) whose best segment scores at least ``threshold``
        times the sentence's best score, best first, each with the source span of that best segment. A sentence
        whose best score is not positive cites nothing."""
        out = []
        for s, (a, b) in enumerate(self.sentences):
            row = self.sentence_scores[s] if len(self.sentence_scores) else np.zeros(0)
            best: dict[int, int] = {}  # passage -> its best segment
            for j in np.argsort(-row, kind="stable"):
                best.setdefault(self.segments[j].passage, int(j))
            top = float(row.max()) if row.size else 0.0
            cites = []
            for p, j in best.items():
                rel = float(row[j]) / top if top > 0 else 0.0
                if top <= 0 or rel < threshold or len(cites) == k:
                    break
                seg, chunk = self.segments[j], prompt.passages[p]
                cites.append(
                    SourceSpan(
                        p + 1, chunk.id, chunk.source_id, chunk.start + seg.start, chunk.start + seg.end, rel, seg.text
                    )
                )
            out.append(SentenceCitation(self.answer[a:b], a, b, cites, threshold))
        return out


@dataclass
class TracerBase(Stage):
    """Options every tracer shares.

    Parameters
    ----------
    unit : {"sentence", "passage", "words"}
        Segments: sentences (pysbd), whole passages, or windows of ``words`` words.
    words : int
        Words per window with ``unit="words"``.
    top_k : int
        K: segments reported (and passages cited) at most.
    threshold : float
        Confidence threshold in [0, 1]: a passage is cited for a sentence when its score is at least this share
        of the sentence's best score.
    seed : int
        Seed of the random subsamples or ablations (the same seed gives the same trace).
    """

    name: ClassVar[str] = "tracer"
    unit: str = option("sentence", choices=UNITS)
    words: int = option(50, minimum=1)
    top_k: int = option(5, minimum=1)
    threshold: float = option(0.5, low=0.0, high=1.0)
    seed: int = option(0, minimum=0)

    def trace(self, prompt: Prompt, generation: Generation, lm: Generator) -> Trace:
        """Score every segment of ``prompt``'s passages for ``generation``'s answer (whole and per sentence)."""
        t0 = time.perf_counter()
        lm.warm_up()
        segments = split(prompt.passages, self.unit, self.words)
        answer = list(generation.token_ids)
        spans, owner = answer_sentences(lm, answer, generation.text)
        if not segments or not answer:
            zeros = np.zeros((len(spans) + 1, len(segments)))
            return Trace(segments, zeros[0], zeros[1:], spans, generation.text, self.label, 0.0, 0)
        groups = [np.arange(len(answer))] + [np.flatnonzero(owner == s) for s in range(len(spans))]
        scores, forwards = self.score(lm, prompt, segments, answer, groups, np.random.default_rng(self.seed))
        return Trace(
            segments, scores[0], scores[1:], spans, generation.text, self.label, time.perf_counter() - t0, forwards
        )

    def score(
        self,
        lm: Generator,
        prompt: Prompt,
        segments: list[Segment],
        answer: list[int],
        groups: list[np.ndarray],
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, int]:
        """(len(groups), n_segments) scores, one row per group of answer tokens; and the forward passes taken."""
        raise NotImplementedError


def _with_answer(rb: Rebuilt, answer: Sequence[int]) -> torch.Tensor:
    return torch.cat([rb.prompt.input_ids, torch.tensor([list(answer)], dtype=rb.prompt.input_ids.dtype)], dim=1)


def segment_scores(
    token_scores: torch.Tensor, owner: np.ndarray, segments: Sequence[int], avg_k: int | None
) -> np.ndarray:
    """(G, n) scores of the ``segments`` from (G, T) token scores: the mean of each segment's ``avg_k`` best
    tokens, or the sum over its tokens when ``avg_k`` is None (0 for a segment without tokens). All segments at
    once in O(T log T): the tokens of the segments sorted by segment, then by score, and each segment's first
    ``avg_k`` summed."""
    seg = np.asarray(segments, dtype=np.int64)
    if len(np.unique(seg)) < len(seg):
        raise ConfigError(f"segment_scores takes each segment once, got {list(segments)!r}")
    out = np.zeros((token_scores.shape[0], len(seg)))
    if not len(seg):
        return out
    order = np.argsort(seg, kind="stable")
    where = np.minimum(np.searchsorted(seg[order], owner), len(seg) - 1)
    hit = seg[order][where] == owner
    col = order[where[hit]]  # per token of a kept segment, its column in ``out``
    scores = token_scores.detach().double().cpu().numpy()[:, hit]
    for g in range(scores.shape[0]):
        if avg_k is None:
            out[g] = np.bincount(col, weights=scores[g], minlength=len(seg))
            continue
        by = np.lexsort((-scores[g], col))  # by segment, the best token first
        c, v = col[by], scores[g][by]
        top = np.arange(len(c)) - np.searchsorted(c, c) < avg_k  # a token's rank within its segment
        sums = np.bincount(c[top], weights=v[top], minlength=len(seg))
        out[g] = sums / np.maximum(np.bincount(c[top], minlength=len(seg)), 1)
    return out


@dataclass
class AttnTrace(TracerBase):
    """AttnTrace (Wang et al. 2025, https://arxiv.org/abs/2508.03793): the attention the answer tokens pay to the
    context, on random subsamples of the context's segments.

    For each of ``subsamples`` (B) draws, a fraction ``keep`` (q) of the segments is kept in its order and the
    prompt rebuilt from them; one forward over prompt + answer gives, through :mod:`ragcore.attention`, the
    attention of each answer token's row (the row that predicted it) to every context token, averaged over
    layers and heads. A segment scores the mean of its ``avg_k`` highest token scores; its trace score is the
    mean over the subsamples that kept it. Subsampling spreads the attention that redundant segments share;
    top-k averaging keeps a long segment's few decisive tokens from being diluted.

    Parameters
    ----------
    subsamples : int
        B, subsamples drawn (paper: 30). ``subsamples=1, keep=1.0`` is the one-forward interactive setting.
    keep : float
        q, fraction of the segments each subsample keeps, in (0, 1] (paper: 0.4).
    avg_k : int
        Tokens averaged per segment (paper: 5).
    batch_size : int
        Subsamples scored together in one forward pass (right-padded; the scores are those of one at a time, up
        to floating-point rounding): speed and memory only. The default 32 scores the paper's 30 in one pass.
    unit, words, top_k, threshold, seed :
        See :class:`TracerBase` (paper: K = ``top_k`` = 5).
    """

    name: ClassVar[str] = "attntrace"
    subsamples: int = option(30, minimum=1)
    keep: float = option(0.4, low=0.0, high=1.0, low_open=True)
    avg_k: int = option(5, minimum=1)
    batch_size: int = option(32, minimum=1)

    def score(self, lm, prompt, segments, answer, groups, rng):  # noqa: ANN001, ANN201 - see TracerBase.score
        n = len(segments)
        total, seen = np.zeros((len(groups), n)), np.zeros(n)
        m = max(1, round(self.keep * n))
        draws = 1 if m == n else self.subsamples
        keeps = []
        for _ in range(draws):
            keep = np.zeros(n, dtype=bool)
            keep[rng.choice(n, size=m, replace=False) if m < n else slice(None)] = True
            keeps.append(keep)
        rebuilt = rebuild_many(lm, prompt, segments, keeps)  # every subsample's prompt, tokenised as one batch
        for b0 in range(0, draws, self.batch_size):  # one forward per batch of subsamples
            rbs = rebuilt[b0 : b0 + self.batch_size]
            tps = [len(rb.prompt) for rb in rbs]
            rows = [range(tp - 1, tp - 1 + len(answer)) for tp in tps]
            atts = rows_attention_batch(lm.model, [_with_answer(rb, answer)[0] for rb in rbs], rows)  # (A, T) each
            for keep, rb, tp, att in zip(keeps[b0 : b0 + self.batch_size], rbs, tps, atts):
                per_token = att[:, :tp]  # (A, T_prompt), averaged over layers and heads
                grouped = torch.stack([per_token[torch.as_tensor(g)].mean(0) for g in groups])
                kept = np.flatnonzero(keep)
                total[:, kept] += segment_scores(grouped, rb.token_segment, kept, self.avg_k_or_none)
                seen[kept] += 1
        return total / np.maximum(seen, 1), draws

    @property
    def avg_k_or_none(self) -> int | None:
        return self.avg_k


@dataclass
class RawAttention(AttnTrace):
    """Raw attention, the baseline AttnTrace improves on: one forward on the whole context (no subsampling), a
    segment scores the sum of the attention its tokens receive (no top-k averaging), averaged over layers and
    heads. Options as :class:`TracerBase`."""

    name: ClassVar[str] = "attention"
    label_skip: ClassVar[tuple[str, ...]] = ("subsamples", "keep", "avg_k", "batch_size")
    subsamples: int = option(1, minimum=1, maximum=1)
    keep: float = option(1.0, low=1.0, high=1.0)

    @property
    def avg_k_or_none(self) -> int | None:
        return None


@torch.inference_mode()
def answer_logprobs_batch(
    lm: Generator, rbs: Sequence[Rebuilt], answer: Sequence[int]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per rebuilt prompt of ``rbs``, log p and log(1 - p) of each answer token given it (teacher-forced), each
    (A,) float32 on the CPU, from ONE forward over the batch (right-padded: causal attention keeps the padding out
    of every real row; the LM head runs on the answer rows only)."""
    a = len(answer)
    seqs = [_with_answer(rb, answer)[0] for rb in rbs]
    lens = [int(x.numel()) for x in seqs]
    dev = lm.model.device
    ids = torch.zeros((len(seqs), max(lens)), dtype=torch.long, device=dev)
    for i, x in enumerate(seqs):
        ids[i, : lens[i]] = x.to(dev)
    hidden = lm.model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state  # (B, T, d), final norm
    rows = torch.as_tensor([list(range(n - a - 1, n - 1)) for n in lens], device=dev)  # rows predicting the answer
    logits = lm.model.get_output_embeddings()(hidden[torch.arange(len(seqs), device=dev)[:, None], rows]).float()
    target = torch.as_tensor(list(answer), device=dev).expand(len(seqs), a)[..., None]
    lp = torch.log_softmax(logits, -1).gather(-1, target)[..., 0].cpu()  # (B, A)
    return [(x, torch.log1p(-x.exp().clamp(max=1 - 1e-7))) for x in lp]


def answer_logprobs(lm: Generator, rb: Rebuilt, answer: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """log p and log(1 - p) of each answer token given ``rb``'s prompt (teacher-forced), each (A,)."""
    return answer_logprobs_batch(lm, [rb], answer)[0]


def _group_sums(values: torch.Tensor, groups: list[np.ndarray]) -> np.ndarray:
    return np.array([float(values[torch.as_tensor(g)].sum()) for g in groups])


@dataclass
class LeaveOneOut(TracerBase):
    """Leave-one-out ablation: a segment scores the drop in the answer's log-probability (per answer sentence)
    when the prompt is rebuilt without it; one forward for the whole context plus one per segment. Options as
    :class:`TracerBase`."""

    name: ClassVar[str] = "loo"

    def score(self, lm, prompt, segments, answer, groups, rng):  # noqa: ANN001, ANN201 - see TracerBase.score
        n = len(segments)
        keeps = [np.ones(n, dtype=bool)] + [np.arange(n) != j for j in range(n)]  # all, then each one left out
        rebuilt = rebuild_many(lm, prompt, segments, keeps)
        full = _group_sums(answer_logprobs(lm, rebuilt[0], answer)[0], groups)
        out = np.zeros((len(groups), n))
        for j in range(n):
            out[:, j] = full - _group_sums(answer_logprobs(lm, rebuilt[j + 1], answer)[0], groups)
        return out, n + 1


@dataclass
class ContextCite(TracerBase):
    """ContextCite (Cohen-Wang et al. 2024, https://arxiv.org/abs/2409.00729), implemented in process: random
    ablations keep each segment with probability ``keep``; the target is the answer's summed per-token logit
    probability log(p / (1 - p)); a LASSO (scikit-learn, ``alpha``) on the keep masks gives each segment's
    weight, its score. This is our implementation of the method, not the ``context-cite`` package; its defaults
    are the package's (``ContextCiter``: 64 ablations, keep probability 0.5, one ablation per forward).

    Parameters
    ----------
    ablations : int
        Ablated contexts, one forward each (64 here; the paper studies 32 to 256).
    keep : float
        Probability that an ablation keeps a segment.
    alpha : float
        LASSO regularisation strength.
    batch_size : int
        Ablations scored together in one forward pass (right-padded; the scores are those of one at a time, up to
        floating-point rounding): speed and memory only. The package's default is 1.
    unit, words, top_k, threshold, seed :
        See :class:`TracerBase`.
    """

    name: ClassVar[str] = "contextcite"
    ablations: int = option(64, minimum=2)
    keep: float = option(0.5, low=0.0, high=1.0, low_open=True, high_open=True)
    alpha: float = option(0.01, low=0.0, low_open=True)
    batch_size: int = option(1, minimum=1)

    def score(self, lm, prompt, segments, answer, groups, rng):  # noqa: ANN001, ANN201 - see TracerBase.score
        from sklearn.linear_model import Lasso

        n = len(segments)
        masks = rng.random((self.ablations, n)) < self.keep
        masks[masks.sum(1) == 0, rng.integers(n)] = True  # every ablation keeps something
        y = np.zeros((self.ablations, len(groups)))
        rebuilt = rebuild_many(lm, prompt, segments, list(masks))  # every ablation's prompt, tokenised as one batch
        for b0 in range(0, self.ablations, self.batch_size):
            rbs = rebuilt[b0 : b0 + self.batch_size]
            for i, (lp, l1p) in enumerate(answer_logprobs_batch(lm, rbs, answer), start=b0):
                y[i] = _group_sums(lp - l1p, groups)
        out = np.zeros((len(groups), n))
        for g in range(len(groups)):
            out[g] = Lasso(alpha=self.alpha, max_iter=10_000).fit(masks.astype(float), y[:, g]).coef_
        return out, self.ablations
