"""ChunkKV: keep whole chunks of consecutive tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from compress.kv.base import LayerPrefill, WrapperCompressor, as_distribution
from ragcore.stages import option


@dataclass
class ChunkKV(WrapperCompressor):
    """ChunkKV (Liu et al., 2025, https://arxiv.org/abs/2502.00299): keep whole chunks of consecutive tokens instead
    of scattered single tokens. A chunk's score is the mean of its tokens' inner scores, given back to each of its
    tokens, so ``chunk_size`` neighbours are kept or dropped together (a phrase survives with its context).

    Parameters
    ----------
    inner:
        The compressor that scores tokens (default snapkv).
    chunk_size:
        Tokens per chunk.
    share_heads:
        Normalise each head's scores and average them over the layer's key/value heads, so every head keeps the
        same chunks (the paper's layer-wise choice).
    ratio, budget, n_sink, protect_last:
        As in :class:`KVCompressor`.
    """

    chunk_size: int = option(10, minimum=1)
    share_heads: bool = option(True)
    name: ClassVar[str] = "chunk"

    def score(self, x: LayerPrefill) -> torch.Tensor:
        s = self.inner.score(x).float()
        b, h, t = s.shape
        if self.share_heads:
            s = as_distribution(s).mean(1, keepdim=True)  # per head a distribution, then averaged over heads
        c = self.chunk_size
        n = -(-t // c)
        total = F.pad(s, (0, n * c - t)).view(s.shape[0], s.shape[1], n, c).sum(-1)
        count = torch.full((n,), float(c), device=s.device)
        count[-1] = t - (n - 1) * c
        return (total / count).repeat_interleave(c, -1)[..., :t].expand(b, h, t)
