"""Key norm: keep the tokens whose keys have the smallest L2 norm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from compress.kv.base import KVCompressor, LayerPrefill


@dataclass
class KNorm(KVCompressor):
    """Key-norm eviction (Devoto et al., 2024, https://arxiv.org/abs/2406.11430): tokens whose keys have a small L2
    norm draw the most attention, so those are kept. Needs no attention at all.

    Parameters
    ----------
    ratio, budget, n_sink, protect_last:
        As in :class:`KVCompressor`.
    """

    name: ClassVar[str] = "knorm"

    def score(self, x: LayerPrefill) -> torch.Tensor:
        return -x.keys.float().norm(dim=-1)
