"""Random eviction: the floor every method must beat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from compress.kv.base import KVCompressor, LayerPrefill
from ragcore.stages import option


@dataclass
class RandomPress(KVCompressor):
    """Random eviction (kvpress's ``RandomPress``): seeded per layer, so runs repeat.

    Parameters
    ----------
    seed:
        Seed of the random scores (each layer draws from ``seed`` and its index).
    ratio, budget, n_sink, protect_last:
        As in :class:`KVCompressor`.
    """

    seed: int = option(0)
    name: ClassVar[str] = "random"

    def score(self, x: LayerPrefill) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed + 1000003 * x.layer)
        return torch.rand(x.keys.shape[:3], generator=gen).to(x.keys.device)
