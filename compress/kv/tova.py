"""TOVA (Oren et al., 2024): keep the tokens the last query attends to most (averaged over the query heads of
each key/value group)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from compress.kv.base import KVCompressor, group_mean
from ragcore.attention import head_counts


@dataclass
class TOVA(KVCompressor):
    name: ClassVar[str] = "tova"
    attention_based: ClassVar[bool] = True

    def score(
        self,
        module: nn.Module,
        hidden: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        key_offset: int = 0,
    ) -> torch.Tensor:
        rows = slice(hidden.shape[1] - 1, hidden.shape[1])
        a = self.attention(module, hidden, position_embeddings, rows, keys, key_offset)[:, :, 0]  # (B, H, T)
        return group_mean(a, head_counts(module)[1])
