"""H2O (Zhang et al., 2023): heavy hitters = tokens with the largest attention accumulated over all prefill
queries, plus a window of the most recent tokens. The accumulation runs in row chunks through
``ragcore.attention.rows_attention``, so memory stays linear in the prompt length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from compress.kv.base import KVCompressor, group_mean
from ragcore.attention import head_counts
from ragcore.errors import ConfigError


@dataclass
class H2O(KVCompressor):
    window: int = 32
    chunk: int = 256
    name: ClassVar[str] = "h2o"
    attention_based: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 0:
            raise ConfigError(f"window must be a non-negative integer, got {self.window!r}")
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, int) or self.chunk < 1:
            raise ConfigError(f"chunk must be a positive integer, got {self.chunk!r}")

    def protected(self, t: int, device: torch.device) -> torch.Tensor:
        keep = super().protected(t, device)
        if self.window:
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
        weights = self.row_weights(hidden.shape[1], hidden.device)
        acc = self.chunked_attention_sum(module, hidden, position_embeddings, keys, key_offset, weights, self.chunk)
        return group_mean(acc, head_counts(module)[1])

    def row_weights(self, t_q: int, device: torch.device) -> torch.Tensor | None:
        """Weight of each prefill query row in the accumulation (None: all equal)."""
        return None
