"""H2O: heavy hitters of the accumulated prefill attention, plus a recent window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from compress.kv.base import KVCompressor, LayerPrefill, group_mean
from ragcore.stages import option


@dataclass
class H2O(KVCompressor):
    """H2O (Zhang et al., 2023, https://arxiv.org/abs/2306.14048): heavy hitters are the tokens with the largest
    attention accumulated over all prefill queries; a window of the most recent tokens is always kept. The
    accumulation runs in row chunks through ``ragcore.attention.rows_attention``, so memory stays linear in the
    prompt length.

    Parameters
    ----------
    window:
        Most recent tokens always kept.
    chunk:
        Query rows whose attention is computed at once (memory O(chunk x T)).
    ratio, budget, n_sink, protect_last:
        As in :class:`KVCompressor`.
    """

    window: int = option(32, minimum=0)
    chunk: int = option(256, minimum=1)
    name: ClassVar[str] = "h2o"
    attention_based: ClassVar[bool] = True

    def protected(self, t: int, device: torch.device) -> torch.Tensor:
        keep = super().protected(t, device)
        if self.window:
            keep[max(t - self.window, 0) :] = True
        return keep

    def score(self, x: LayerPrefill) -> torch.Tensor:
        weights = self.row_weights(x.hidden.shape[1], x.hidden.device)
        return group_mean(x.attention_sum(weights, self.chunk), x.n_kv)

    def row_weights(self, t_q: int, device: torch.device) -> torch.Tensor | None:
        """Weight of each prefill query row in the accumulation (None: all equal)."""
        return None
