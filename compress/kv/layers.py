"""Layer-shared selection: every layer keeps the same positions, chosen once from all layers' scores.

Per-layer methods let each layer (and head) keep its own tokens, so a fact can survive in some layers and not in
others: on NQ-open the typical loss is a date that keeps its month but loses its day ("April 11" read back as
"April 18"). This wrapper scores each layer with its inner compressor, turns each head's scores into a
distribution (shifted to >= 0, summed to 1), averages the heads and sums the layers; after the last layer's
prefill it selects once and prunes every layer to the same positions.

Until the last layer is prefilled the layers hold their full cache, so the prefill's peak memory is that of an
uncompressed prefill; per-layer methods free each layer's surplus as they go.

Measured (docs/RESULTS.md, kv-headline-select-gpu-r1; Qwen2.5-0.5B, NQ-open top 5, query-aware): sharing one
selection across layers loses far more than letting each layer choose (layers:snapkv -11 points at ratio 0.5
against snapkv's -5): layers attend to different tokens, and a common choice starves each of what it reads.
Kept as a measured negative result and as a baseline for layer-wise methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from compress.kv.base import CrossLayer, WrapperCompressor, as_distribution
from ragcore import cache as kvcache


@dataclass
class LayerShared(CrossLayer, WrapperCompressor):
    name: ClassVar[str] = "layers"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.attention_based = self.inner.attention_based

    def keep(
        self,
        module: nn.Module,
        hidden: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        cache: Any,
        layer: int,
        k: int,
    ) -> None:
        keys, values = kvcache.get_kv(cache, layer)
        s = self.checked_score(module, hidden, keys, values, position_embeddings)
        pending = self.gather(layer, as_distribution(s).mean(1))  # (B, T): this layer's vote
        if pending is None:
            return
        total = torch.stack([v for _, v in pending]).sum(0)
        _, floor = self._protected_floor(keys.shape[-2], total.device)
        idx, _ = self.select(torch.maximum(total, floor)[:, None], k)  # (B, 1, k)
        for lay, _ in pending:
            self.prune_layer(cache, lay, idx.expand(-1, kvcache.get_kv(cache, lay)[0].shape[1], -1), None)
