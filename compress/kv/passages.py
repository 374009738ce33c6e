"""Whole parts of the prompt first: a passage-level ranking on top of any token scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from compress.kv.base import LayerPrefill, WrapperCompressor, as_distribution
from ragcore.stages import option


@dataclass
class PassageKV(WrapperCompressor):
    """Passage-level selection (ChunkKV's argument, https://arxiv.org/abs/2502.00299, at the scale of passages).

    The prompt's parts are its passages and the stretches between them (the instruction before the first passage,
    the question after the last). Each part's score is the mean of its tokens' inner scores (each head's scores a
    distribution, averaged over the layer's heads); parts are ranked by it, and every token of a better part comes
    before every token of a worse one. Within a part, and in the one part the budget cuts, the inner scores decide,
    so a budget of a few hundred tokens keeps the passages the question reads most whole.

    The parts come from the ``Prompt`` given to ``apply`` (``Generator`` gives it); without one the inner scores
    are used as they are.

    Parameters
    ----------
    inner:
        The compressor that scores tokens.
    rest_first:
        Rank the stretches between passages (instruction, question, chat template) above every passage, so only
        passages are ever cut.
    ratio, budget, n_sink, protect_last:
        As in :class:`KVCompressor`.
    """

    rest_first: bool = option(False)
    name: ClassVar[str] = "passages"

    def score(self, x: LayerPrefill) -> torch.Tensor:
        s = self.inner.score(x).float()
        b, h, t = s.shape
        prompt = x.call.prompt
        spans = prompt.passage_spans() if prompt is not None else []
        starts = [p for p in sorted({0, *(a for a, _ in spans), *(e for _, e in spans)}) if p < t]
        if len(starts) < 2:  # no prompt parts known: the inner method's order
            return s
        s = as_distribution(s).mean(1)  # (B, T), each token <= 1
        part = torch.bucketize(torch.arange(t, device=s.device), torch.tensor(starts, device=s.device), right=True) - 1
        n = len(starts)
        mean = torch.zeros(b, n, device=s.device).index_add_(1, part, s) / torch.bincount(part, minlength=n)
        if self.rest_first:  # every stretch between passages above every passage (means are <= 1)
            passage_starts = {a for a, _ in spans}
            rest = torch.tensor([p not in passage_starts for p in starts], device=s.device)
            mean = mean + 2 * rest
        rank = mean.argsort(-1).argsort(-1).float()  # 0 = the worst part
        return (s + 2 * rank.gather(1, part.expand(b, t)))[:, None].expand(b, h, t)  # rank steps of 2 > any s
