"""Random eviction: the floor every method must beat. Seeded, so runs repeat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from compress.kv.base import KVCompressor
from ragcore.errors import ConfigError


@dataclass
class RandomPress(KVCompressor):
    seed: int = 0
    name: ClassVar[str] = "random"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")

    def score(
        self,
        module: nn.Module,
        hidden: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        key_offset: int = 0,
    ) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed + 1000003 * int(getattr(module, "layer_idx", 0) or 0))
        return torch.rand(keys.shape[:3], generator=gen).to(keys.device)
