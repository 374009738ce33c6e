"""Key norm (Devoto et al., 2024): tokens whose keys have a small L2 norm draw the most attention; keep those."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from compress.kv.base import KVCompressor


@dataclass
class KNorm(KVCompressor):
    name: ClassVar[str] = "knorm"

    def score(
        self,
        module: nn.Module,
        hidden: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        key_offset: int = 0,
    ) -> torch.Tensor:
        return -keys.float().norm(dim=-1)
