"""A2SF (Jo & Shin, 2024): accumulated attention with a forgetting factor. Query row ``i`` of ``T`` contributes
with weight ``forgetting ** (T - 1 - i)``, so recent queries count more than old ones (H2O is
``forgetting = 1``). Chunked like H2O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from compress.kv.base import KVCompressor, group_mean
from ragcore.attention import _heads
from ragcore.errors import ConfigError


@dataclass
class A2SF(KVCompressor):
    forgetting: float = 0.99
    window: int = 0
    chunk: int = 256
    name: ClassVar[str] = "a2sf"
    attention_based: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            isinstance(self.forgetting, bool)
            or not isinstance(self.forgetting, (int, float))
            or not 0 < self.forgetting <= 1
        ):
            raise ConfigError(f"forgetting must be in (0, 1], got {self.forgetting!r}")
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
        t_q = hidden.shape[1]
        age = torch.arange(t_q - 1, -1, -1, device=hidden.device, dtype=torch.float64)
        weights = torch.pow(torch.tensor(float(self.forgetting), dtype=torch.float64), age).float()
        acc = self.chunked_attention_sum(module, hidden, position_embeddings, keys, key_offset, weights, self.chunk)
        return group_mean(acc, _heads(module)[1])
