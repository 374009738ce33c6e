"""SnapKV (Li et al., 2024): the last ``window`` queries (the observation window) vote for the tokens they
attend to; votes are averaged over the window and over the query heads of each key/value group, then
max-pooled along the sequence (``kernel_size``) so neighbours of a hit survive with it. The window itself
is always kept. ``group="max"`` takes, per key/value head, the largest vote of its query heads instead of their
mean, so a token that one query head of a group needs is not outvoted by the others."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from compress.kv.base import KVCompressor, group_mean
from ragcore.attention import head_counts
from ragcore.errors import ConfigError


def pool1d(scores: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Max-pool (B, H, T) along T with a centred window of odd ``kernel_size``, same length out."""
    if kernel_size <= 1:
        return scores
    b, h, t = scores.shape
    out = F.max_pool1d(scores.reshape(b * h, 1, t), kernel_size, stride=1, padding=kernel_size // 2)
    return out.reshape(b, h, -1)[..., :t]


@dataclass
class SnapKV(KVCompressor):
    window: int = 32
    kernel_size: int = 5
    group: str = "mean"
    name: ClassVar[str] = "snapkv"
    attention_based: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ConfigError(f"window must be a positive integer, got {self.window!r}")
        if not isinstance(self.kernel_size, int) or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be a positive odd integer, got {self.kernel_size!r}")
        if self.group not in ("mean", "max"):
            raise ConfigError(
                f"group must be 'mean' or 'max' (how a key/value head's query heads vote), got {self.group!r}"
            )

    def protected(self, t: int, device: torch.device) -> torch.Tensor:
        keep = super().protected(t, device)
        keep[max(t - self.window, 0) :] = True
        return keep

    def score(
        self,
        module: nn.Module,
        hidden: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        key_offset: int = 0,
    ) -> torch.Tensor:
        t_q = hidden.shape[1]
        rows = slice(max(t_q - self.window, 0), t_q)
        a = self.attention(module, hidden, position_embeddings, rows, keys, key_offset)  # (B, H, w, T)
        votes, n_kv = a.mean(2), head_counts(module)[1]  # (B, H, T)
        if self.group == "max":
            s = votes.view(votes.shape[0], n_kv, -1, votes.shape[-1]).amax(2)
        else:
            s = group_mean(votes, n_kv)
        return pool1d(s, self.kernel_size)
