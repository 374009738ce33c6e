"""SnapKV: the last queries vote for the tokens they attend to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from compress.kv.base import KVCompressor, LayerPrefill, group_mean
from ragcore.errors import ConfigError
from ragcore.stages import option


def pool1d(scores: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Max-pool (B, H, T) along T with a centred window of odd ``kernel_size``, same length out."""
    if kernel_size <= 1:
        return scores
    b, h, t = scores.shape
    out = F.max_pool1d(scores.reshape(b * h, 1, t), kernel_size, stride=1, padding=kernel_size // 2)
    return out.reshape(b, h, -1)[..., :t]


@dataclass
class SnapKV(KVCompressor):
    """SnapKV (Li et al., 2024, https://arxiv.org/abs/2404.14469): the last ``window`` queries (the observation
    window) vote for the tokens they attend to; votes are averaged over the window and over the query heads of each
    key/value group, then max-pooled along the sequence so neighbours of a hit survive with it. The window itself is
    always kept.

    Parameters
    ----------
    window:
        Observation window: the last query rows that vote (and are kept).
    kernel_size:
        Odd width of the max-pooling along the sequence (1: none).
    group:
        How a key/value head's query heads vote: ``"mean"`` (the paper) or ``"max"`` (the loudest query head).
    ratio, budget, n_sink, protect_last:
        As in :class:`KVCompressor`.
    """

    window: int = option(32, minimum=1)
    kernel_size: int = option(5, minimum=1)
    group: str = option("mean", choices=("mean", "max"))
    name: ClassVar[str] = "snapkv"
    attention_based: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be a positive odd integer, got {self.kernel_size!r}")

    def protected(self, t: int, device: torch.device) -> torch.Tensor:
        keep = super().protected(t, device)
        keep[max(t - self.window, 0) :] = True
        return keep

    def score(self, x: LayerPrefill) -> torch.Tensor:
        t_q = x.hidden.shape[1]
        votes = x.attention(slice(max(t_q - self.window, 0), t_q)).mean(2)  # (B, H, T)
        if self.group == "max":
            s = votes.view(votes.shape[0], x.n_kv, -1, votes.shape[-1]).amax(2)
        else:
            s = group_mean(votes, x.n_kv)
        return pool1d(s, self.kernel_size)
