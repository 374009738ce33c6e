"""InfiniRetri (arXiv 2502.12962): read an input of any length through the model's own attention, a window at a
time, carrying forward only the sentences the question attends to.

The passages are split into sentences (:func:`ragcore.sentences.split_sentences`, pysbd) and packed in
order into segments of at most ``segment`` tokens. For each segment the model reads the carried sentences, the
segment and the question (one ``Generator.prompt``); the attention that the question's tokens pay to each context
token is read at ``layer`` (default: the last), summed over heads and averaged over the question's tokens (each
question token weighs the same: every attention row sums to 1), and smoothed by a 1-D box filter of
``answer_length`` tokens (an answer is a phrase, not one token). The sentences holding the ``top_k`` best tokens
are kept, best first, up to ``carry`` tokens, and carried to the next segment. The answer is generated from what
is carried at the end.

Each step reads at most ``carry + segment`` context tokens plus the prompt's template and question, so memory does
not grow with the input's length; and each step runs the model only up to ``layer``'s input
(:func:`ragcore.attention.layer_input`), so reading layer ``l`` of ``L`` costs about ``l / L`` of a forward pass (measured: docs/RESULTS.md, section ``longctx``). Output passages are runs of
adjacent kept sentences, each with the exact text and character span of its source passage.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ragcore.attention import decoder_layers, layer_input, rows_attention
from ragcore.errors import ConfigError
from ragcore.sentences import split_sentences
from ragcore.stages import Stage, option
from ragcore.types import Chunk, ScoredChunk

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sentence:
    """A sentence of passage ``passage``: characters [start, end) of its text, ``tokens`` long."""

    passage: int
    start: int
    end: int
    tokens: int
    order: int  # position among all sentences of the input


def sentences_of(passages: Sequence[ScoredChunk], tokenizer: Any, max_tokens: int) -> list[Sentence]:
    """Every sentence of ``passages`` in order, with its token count; a sentence over ``max_tokens`` tokens is cut
    at token boundaries into pieces of at most that many."""
    spans = [(pi, a, b) for pi, p in enumerate(passages) for a, b in split_sentences(p.chunk.text)]
    texts = [passages[pi].chunk.text[a:b] for pi, a, b in spans]
    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for (pi, a, _b), offsets in zip(spans, enc["offset_mapping"]):
        for i in range(0, len(offsets), max_tokens):
            piece = offsets[i : i + max_tokens]
            out.append(Sentence(pi, a + piece[0][0], a + piece[-1][1], len(piece), len(out)))
    return out


def runs(
    passages: Sequence[ScoredChunk], kept: Sequence[Sentence], name: str, scores: dict[Sentence, float]
) -> list[ScoredChunk]:
    """Adjacent kept sentences of one passage joined into passages holding their source's exact text and span."""
    out: list[ScoredChunk] = []
    cur: list[Sentence] = []

    def flush() -> None:
        if not cur:
            return
        src = passages[cur[0].passage]
        a, b = cur[0].start, cur[-1].end
        c = src.chunk
        chunk = Chunk(c.text[a:b], c.source_id, c.start + a, c.start + b, dict(c.metadata, parent=c.id))
        out.append(ScoredChunk(chunk, {**src.scores, name: max(scores[s] for s in cur)}, src.rank))
        cur.clear()

    for s in kept:
        if cur and (s.passage != cur[-1].passage or s.order != cur[-1].order + 1):
            flush()
        cur.append(s)
    flush()
    return out


@dataclass
class InfiniRetri(Stage):
    """InfiniRetri: attention-guided reading of inputs longer than the model's window (arXiv 2502.12962).

    Parameters
    ----------
    segment : int
        Tokens of new input read per step (whole sentences, packed in order). Fewer, longer steps launch fewer
        kernels on a GPU: 4096 kept the development accuracy of 1024 with both bundled models at 64k tokens and was
        faster (infiniretri-segment-dev-gpu, longctx-segment-quiet-gpu); the default stays the paper's and the
        peer's 1024.
    top_k : int
        Context tokens with the highest smoothed attention per step; their sentences are kept.
    carry : int
        Tokens of kept sentences carried to the next step (and passed on at the end), at most.
    answer_length : int
        Width in tokens of the box filter over the attention scores.
    layer : int
        Layer whose attention is read (negative: from the last; default -1, the last layer).

    Measured settings (docs/RESULTS.md): ``layer=9`` for qwen2.5-0.5b and ``layer=18`` for smollm2-135m (sections
    ``infiniretri-layer-*``); for smollm2-135m also ``carry=128`` (``infiniretri-carry-smol-dev-gpu``): its 135M
    generator copies a key-value record's value out of two or three carried records, not out of the default's ten.
    """

    name: ClassVar[str] = "infiniretri"
    segment: int = option(1024, minimum=16)
    top_k: int = option(64, minimum=1)
    carry: int = option(512, minimum=1)
    answer_length: int = option(8, minimum=1)
    layer: int = option(-1)

    def output_budget(self, passages: Sequence[ScoredChunk], lm: Any) -> int:
        """The most tokens (of ``lm``'s tokenizer, sentence by sentence) the output holds: ``carry``."""
        return self.carry

    def compress(self, question: str, passages: Sequence[ScoredChunk], lm: Any) -> list[ScoredChunk]:
        lm.warm_up()
        if not passages:
            return []
        n_layers = len(decoder_layers(lm.model))
        if not -n_layers <= self.layer < n_layers:
            raise ConfigError(
                f"layer must be in [{-n_layers}, {n_layers - 1}] for {lm.model_name!r}, got {self.layer!r}"
            )
        layer = self.layer % n_layers
        sents = sentences_of(passages, lm.tokenizer, max(1, min(self.segment, self.carry)))
        carried: list[Sentence] = []
        best: dict[Sentence, float] = {}
        i = 0
        while i < len(sents):
            seg, size = [], 0
            while i < len(sents) and (not seg or size + sents[i].tokens <= self.segment):
                seg.append(sents[i])
                size += sents[i].tokens
                i += 1
            carried, best = self._step(question, passages, carried + seg, layer, lm)
        return runs(passages, sorted(carried, key=lambda s: s.order), self.name, best)

    @staticmethod
    @torch.inference_mode()
    def token_scores(
        model: torch.nn.Module, input_ids: torch.Tensor, spans: dict[str, tuple[int, int]], layer: int
    ) -> torch.Tensor:
        """The attention (T,) that the prompt's question rows (``spans["question"]``) pay to each of its T tokens at
        ``layer``: summed over heads, averaged over the rows (each row sums to 1), float32 on the CPU. The decoder
        runs only up to that layer's input (:func:`ragcore.attention.layer_input`); the same figures as
        ``attention_to_spans(model, input_ids, spans, "question", [layer]).tokens[0].sum(0)``, the whole forward.
        Raises ConfigError when the prompt has no question span."""
        if "question" not in spans:
            raise ConfigError(f"InfiniRetri needs the prompt's 'question' span; spans: {', '.join(map(repr, spans))}")
        x = layer_input(model, input_ids, layer)
        rows = torch.arange(*spans["question"], device=x.hidden.device)
        att = rows_attention(x.attn, x.hidden, x.position_embeddings, rows)[0]  # (H, R, T)
        return att.mean(1).cpu().sum(0)

    @torch.inference_mode()
    def _step(
        self, question: str, passages: Sequence[ScoredChunk], context: list[Sentence], layer: int, lm: Any
    ) -> tuple[list[Sentence], dict[Sentence, float]]:
        """One window: score ``context``'s tokens by the question's attention; the sentences to carry (input
        order) and their scores."""
        texts = [passages[s.passage].chunk.text[s.start : s.end] for s in context]
        body = "\n".join(texts)
        prompt = lm.prompt(question, [Chunk(body, "context")])
        c0 = prompt.text.index(body)
        starts, pos = [], c0
        for t in texts:
            starts.append(pos)
            pos += len(t) + 1
        offsets = prompt.offsets
        if offsets is None:  # a prompt builder that kept no offset mapping
            enc = lm.tokenizer(prompt.text, add_special_tokens=False, return_offsets_mapping=True)
            offsets = enc["offset_mapping"]
        scores = self.token_scores(lm.model, prompt.input_ids, prompt.spans, layer)
        lo, hi = prompt.spans.get("passage:1", (0, len(offsets)))  # the context's tokens: look no further
        idx = [j for j in range(lo, hi) if offsets[j][1] > offsets[j][0] and c0 <= offsets[j][0] < c0 + len(body)]
        if not idx:
            return [], {}
        ctx = scores[idx].float()
        w = min(self.answer_length, len(idx))
        smooth = torch.nn.functional.avg_pool1d(ctx[None, None], w, stride=1, padding=w // 2, count_include_pad=False)
        smooth = smooth[0, 0, : len(idx)]
        owner = [bisect.bisect_right(starts, offsets[j][0]) - 1 for j in idx]
        sent_score: dict[int, float] = {}
        for j in torch.topk(smooth, min(self.top_k, len(idx))).indices.tolist():
            sent_score[owner[j]] = max(sent_score.get(owner[j], float("-inf")), float(smooth[j]))
        kept, used = [], 0
        for si in sorted(sent_score, key=lambda k: -sent_score[k]):
            if used + context[si].tokens <= self.carry:
                kept.append(si)
                used += context[si].tokens
        kept.sort()
        return [context[si] for si in kept], {context[si]: sent_score[si] for si in kept}
