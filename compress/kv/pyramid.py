"""PyramidKV: a layer-wise budget, large in the lower layers and small in the upper ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from compress.kv.base import KVBudget, WrapperCompressor
from ragcore.stages import option


@dataclass
class PyramidKV(WrapperCompressor):
    """PyramidKV (Cai et al., 2024, https://arxiv.org/abs/2406.02069): lower layers spread their attention over the
    whole context while upper layers concentrate it on few tokens ("pyramidal information funneling"), so the same
    mean budget serves better when it shrinks with depth. The budget beyond the inner method's protected tokens falls
    linearly from ``2 * b - b / beta`` in the first layer to ``b / beta`` in the last (``b`` the mean); the protected
    tokens are added to every layer, so the mean over layers stays the uniform budget (up to rounding, and lower
    where the first layers' share exceeds the prompt). Tokens are chosen within each layer by the inner method.

    Layers hold caches of different lengths (``layer_lengths_vary``: each gets an all-visible mask of its own
    length; nothing is hidden, so ``masks_only`` stays False). Measured: docs/RESULTS.md, kv-passages-cpu.

    Parameters
    ----------
    inner:
        The compressor that chooses tokens within each layer.
    beta:
        The top layer keeps ``1 / beta`` of the mean free budget (>= 1; 1 is uniform).
    ratio, budget, n_sink, protect_last:
        As in :class:`KVCompressor`.
    """

    beta: float = option(20.0, low=1, what="(the top layer keeps 1/beta of the mean)")
    name: ClassVar[str] = "pyramid"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.attention_based = self.inner.attention_based

    def layer_keep(self, k: int, t: int, layer: int, n_layers: int, n_kv: int) -> int:
        if n_layers < 2 or k >= t:
            return k
        fixed = min(int(self.protected(t, torch.device("cpu")).sum()), k)
        free = k - fixed  # the mean budget beyond the protected tokens
        low = free / self.beta
        high = 2 * free - low
        share = high - (high - low) * layer / (n_layers - 1)
        return max(1, min(t, fixed + round(share)))

    def layer_lengths_vary(self) -> bool:
        return True

    def budget_rule(self, t: int, n_layers: int, n_kv: int) -> KVBudget:
        rule = super().budget_rule(t, n_layers, n_kv)
        k = self.n_keep(t)
        # the rule's own total, which must not exceed the uniform one by more than rounding
        return KVBudget(rule.min_per_head, min(rule.total, n_layers * n_kv * k), slack=n_layers * n_kv)
