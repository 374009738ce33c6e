"""TOVA: keep the tokens the last query attends to most."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from compress.kv.base import KVCompressor, LayerPrefill, group_mean


@dataclass
class TOVA(KVCompressor):
    """TOVA (Oren et al., 2024, https://arxiv.org/abs/2401.06104): keep the tokens the last query attends to most,
    averaged over the query heads of each key/value group.

    Parameters
    ----------
    ratio, budget, n_sink, protect_last:
        As in :class:`KVCompressor`.
    """

    name: ClassVar[str] = "tova"
    attention_based: ClassVar[bool] = True

    def score(self, x: LayerPrefill) -> torch.Tensor:
        t_q = x.hidden.shape[1]
        a = x.attention(slice(t_q - 1, t_q))[:, :, 0]  # (B, H, T)
        return group_mean(a, x.n_kv)
