"""Whole parts of the prompt first: a passage-level ranking on top of any token scores.

The prompt's parts are its passages and the stretches between them (the instruction before the first passage,
the question after the last). Each part's score is the mean of its tokens' inner scores (each head's scores made
a distribution and averaged over the layer's heads, as ``chunk`` does); parts are ranked by it, and every token
of a better part comes before every token of a worse one. Within a part, and in the one part the budget cuts,
the inner scores decide. So a budget of a few hundred tokens keeps the passages the question reads most whole,
instead of the scattered tokens of all of them (ChunkKV's argument, at the scale of passages).

With ``rest_first`` the stretches between passages (instruction, question, chat template) rank above every
passage, so only passages are ever cut.

The parts come from the ``Prompt`` that ``Generator`` hands to ``for_prompt`` before the prefill. Without one (a
bare ``apply`` on token ids) the inner scores are used as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from compress.kv.base import WrapperCompressor, as_distribution


@dataclass
class PassageKV(WrapperCompressor):
    rest_first: bool = False
    name: ClassVar[str] = "passages"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._starts: list[int] = []
        self._passage_starts: set[int] = set()

    def for_prompt(self, prompt: Any) -> None:
        super().for_prompt(prompt)
        spans = prompt.passage_spans() if hasattr(prompt, "passage_spans") else []
        self._starts = sorted({0, *(a for a, _ in spans), *(b for _, b in spans)})
        self._passage_starts = {a for a, _ in spans}

    def score(
        self,
        module: nn.Module,
        hidden: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        key_offset: int = 0,
    ) -> torch.Tensor:
        s = self.inner.score(module, hidden, keys, values, position_embeddings, key_offset).float()
        b, h, t = s.shape
        starts = [x for x in self._starts if x < t]
        if len(starts) < 2:  # no prompt parts known: the inner method's order
            return s
        s = as_distribution(s).mean(1)  # (B, T), each token <= 1
        part = torch.bucketize(torch.arange(t, device=s.device), torch.tensor(starts, device=s.device), right=True) - 1
        n = len(starts)
        mean = torch.zeros(b, n, device=s.device).index_add_(1, part, s) / torch.bincount(part, minlength=n)
        if self.rest_first:  # every stretch between passages above every passage (means are <= 1)
            rest = torch.tensor([x not in self._passage_starts for x in starts], device=s.device)
            mean = mean + 2 * rest
        rank = mean.argsort(-1).argsort(-1).float()  # 0 = the worst part
        return (s + 2 * rank.gather(1, part.expand(b, t)))[:, None].expand(b, h, t)  # rank steps of 2 > any s
