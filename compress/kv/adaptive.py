"""Head-adaptive budgets (AdaKV, Feng et al., 2024), wrapped around any compressor.

The layer's total budget (``k`` tokens x ``H_kv`` heads) is spread over the heads by score concentration:
each head's scores are normalised to sum to 1, every head first gets a floor of ``safeguard * k`` of its best
tokens, and the rest of the budget goes to the best remaining (head, token) pairs across all heads, so heads
whose mass sits on few tokens give budget to heads whose mass is spread out.

The budgets differ per head, so the cache keeps ``max_h k_h`` slots per head and masks the surplus
(``masks_only=True`` in the report when the budgets are uneven; see ``compress.kv.base``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from compress.kv.base import CrossLayer, KVCompressor, WrapperCompressor, as_distribution
from ragcore import cache as kvcache
from ragcore.errors import ConfigError


@dataclass
class AdaKV(WrapperCompressor):
    safeguard: float = 0.2
    name: ClassVar[str] = "adaptive"

    def check_inner(self) -> None:
        if not isinstance(self.inner, KVCompressor) or isinstance(self.inner, AdaKV):
            raise ConfigError(f"adaptive needs a non-adaptive inner compressor, got {self.inner!r}")
        if (
            isinstance(self.safeguard, bool)
            or not isinstance(self.safeguard, (int, float))
            or not 0 <= self.safeguard <= 1
        ):
            raise ConfigError(f"safeguard must be in [0, 1], got {self.safeguard!r}")
        self.attention_based = self.inner.attention_based

    def head_budgets(self, scores: torch.Tensor, protected: torch.Tensor, k: int, module: nn.Module) -> torch.Tensor:
        b, h, t = scores.shape
        s = as_distribution(scores)  # comparable across heads
        s = s.masked_fill(protected, float("inf"))  # protected tokens come first
        floor = min(int(self.safeguard * k), k)
        if floor:
            top = torch.topk(s, floor, dim=-1).indices
            s = s.scatter(-1, top, float("inf"))
        chosen = torch.topk(s.reshape(b, h * t), k * h, dim=-1).indices  # the layer's whole budget
        return torch.bincount(
            (chosen // t + torch.arange(b, device=s.device)[:, None] * h).flatten(), minlength=b * h
        ).view(b, h)


@dataclass
class GlobalAdaKV(CrossLayer, AdaKV):
    """AdaKV's allocation over the whole cache: one pool of ``L x H_kv x k`` entries shared by every layer and head
    (the budget moves between layers too, as CAKE and PyramidKV argue it should, but measured per prompt rather
    than fixed). Each head keeps at least ``safeguard * k`` of its best tokens. Each layer is scored as it is
    prefilled; the selection waits for the last layer, so until then the prefill holds the full cache (as
    ``layers:`` does). Layers end up with caches of different lengths and heads with uneven budgets, enforced by
    masks (``masks_only`` in the report when uneven)."""

    name: ClassVar[str] = "global"

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
        pending = self.gather(layer, self.checked_score(module, hidden, keys, values, position_embeddings))
        if pending is None:
            return
        scores = torch.cat([s for _, s in pending], dim=1)  # (B, L x H_kv, T): every head of every layer
        prot, floor = self._protected_floor(keys.shape[-2], scores.device)
        budgets = self.head_budgets(scores, prot, k, module)
        h = keys.shape[1]
        for i, (lay, s) in enumerate(pending):
            idx, mask = self.select(torch.maximum(s, floor), k, budgets[:, i * h : (i + 1) * h])
            self.prune_layer(cache, lay, idx, torch.ones_like(idx, dtype=torch.bool) if mask is None else mask)
