"""Layer-shared selection: every layer keeps the same positions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from compress.kv.base import LayerPrefill, WrapperCompressor, as_distribution
from ragcore import cache as kvcache


@dataclass
class LayerShared(WrapperCompressor):
    """Layer-shared selection (ragcore's own baseline, no paper): every layer keeps the same positions, chosen once
    from all layers' scores.

    Each layer is scored by the inner compressor; each head's scores become a distribution, heads are averaged and
    layers summed; after the last layer's prefill one selection prunes every layer to the same positions. Until
    then the layers hold their full cache (the prefill's peak memory is that of an uncompressed one). A measured
    negative result kept as a baseline for layer-wise methods (docs/RESULTS.md, kv-headline-select-gpu-r1): layers
    attend to different tokens, and a common choice starves each of what it reads.

    Parameters
    ----------
    inner:
        The compressor that scores tokens in each layer.
    ratio, budget, n_sink, protect_last:
        As in :class:`KVCompressor`.
    """

    name: ClassVar[str] = "layers"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.attention_based = self.inner.attention_based

    def keep(self, x: LayerPrefill, k: int) -> None:
        pending = x.call.gather(x.layer, as_distribution(self.checked_score(x)).mean(1))  # (B, T): this layer's vote
        if pending is None:
            return
        total = torch.stack([v for _, v in pending]).sum(0)
        _, floor = x.call.protected_floor(x.keys.shape[-2], total.device)
        idx, _ = self.select(torch.maximum(total, floor)[:, None], k)  # (B, 1, k)
        for lay, _ in pending:
            h_kv = kvcache.get_kv(x.call.cache, lay)[0].shape[1]
            self.prune_layer(x.call, lay, idx.expand(-1, h_kv, -1), None)
