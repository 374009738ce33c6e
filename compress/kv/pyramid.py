"""PyramidKV (Cai et al., 2024): a layer-wise budget, large in the lower layers and small in the upper ones.

Lower layers spread their attention over the whole context while upper layers concentrate it on few tokens
("pyramidal information funneling"), so the same mean budget serves better when it shrinks with depth. The
budget beyond the inner method's protected tokens (SnapKV's observation window, sinks) falls linearly from the
first layer to the last, from ``2 * b - b / beta`` to ``b / beta`` where ``b`` is the mean; the protected tokens
are added to every layer, so the mean over layers stays the uniform budget (up to rounding, and lower where the
first layers' share exceeds the prompt). Tokens are chosen within each layer by the inner method.

Layers then hold caches of different lengths (``layer_lengths_vary``: each gets an all-visible mask of its own
length; the report keeps ``masks_only=False``: nothing is hidden).

Measured (docs/RESULTS.md, kv-passages-cpu): on 30 NQ-open questions at ratio 0.75 with Qwen2.5-0.5B it did worse
than SnapKV's uniform budget; a small model's upper layers still need their tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from compress.kv.base import WrapperCompressor
from ragcore.attention import decoder_layers
from ragcore.errors import ConfigError


@dataclass
class PyramidKV(WrapperCompressor):
    beta: float = 20.0
    name: ClassVar[str] = "pyramid"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or self.beta < 1:
            raise ConfigError(f"beta must be a number >= 1 (top layer keeps 1/beta of the mean), got {self.beta!r}")
        self.attention_based = self.inner.attention_based
        self._n_layers = 0

    def prepare(self, model: nn.Module) -> None:
        super().prepare(model)
        self._n_layers = len(decoder_layers(model))

    def layer_keep(self, k: int, t: int, layer: int) -> int:
        n = self._n_layers
        if n < 2 or k >= t:
            return k
        fixed = min(int(self.protected(t, torch.device("cpu")).sum()), k)
        free = k - fixed  # the mean budget beyond the protected tokens
        low = free / self.beta
        high = 2 * free - low
        share = high - (high - low) * layer / (n - 1)
        return max(1, min(t, fixed + round(share)))

    def layer_lengths_vary(self) -> bool:
        return True
