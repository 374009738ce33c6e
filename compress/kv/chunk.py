"""ChunkKV (Liu et al., 2025): keep whole chunks of consecutive tokens instead of scattered single tokens.

The inner compressor scores tokens; a chunk's score is the mean of its tokens' scores, given back to each of its
tokens, so selection keeps or drops ``chunk_size`` neighbours together (a phrase survives with its context).
With ``share_heads`` the per-head scores are normalised and averaged over the layer's key/value heads, so every
head keeps the same chunks (the paper's layer-wise choice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from compress.kv.base import WrapperCompressor, as_distribution
from ragcore.errors import ConfigError


@dataclass
class ChunkKV(WrapperCompressor):
    chunk_size: int = 10
    share_heads: bool = True
    name: ClassVar[str] = "chunk"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ConfigError(f"chunk_size must be a positive integer, got {self.chunk_size!r}")

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
        if self.share_heads:
            s = as_distribution(s).mean(1, keepdim=True)  # per head a distribution, then averaged over heads
        c = self.chunk_size
        n = -(-t // c)
        total = F.pad(s, (0, n * c - t)).view(s.shape[0], s.shape[1], n, c).sum(-1)
        count = torch.full((n,), float(c), device=s.device)
        count[-1] = t - (n - 1) * c
        return (total / count).repeat_interleave(c, -1)[..., :t].expand(b, h, t)
