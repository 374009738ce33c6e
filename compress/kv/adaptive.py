"""Head-adaptive budgets (AdaKV), per layer or pooled over every layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from compress.kv.base import KVBudget, KVCompressor, LayerPrefill, WrapperCompressor, as_distribution
from ragcore.errors import ConfigError
from ragcore.stages import option


def adaptive_budgets(
    scores: torch.Tensor, protected: torch.Tensor, k: int, floor: int, normalise: bool = True
) -> torch.Tensor:
    """Tokens per head (B, N) out of a total of ``N x k``, for scores (B, N, T) of N heads.

    Every head first gets ``floor`` of its best tokens (its protected ones first); the rest of the total goes to
    the best remaining (head, token) pairs across all heads, each head's scores made a distribution so heads
    compare (``normalise=False``: scores already compare across heads, e.g. attention probabilities in [0, 1]),
    protected tokens before any other."""
    b, n, t = scores.shape
    floor = max(0, min(floor, k, t))
    s = as_distribution(scores) if normalise else scores.clamp(max=1.0)
    s = s.masked_fill(protected, 2.0)  # scores are <= 1: protected tokens first
    budgets = torch.full((b, n), floor, dtype=torch.long, device=scores.device)
    if floor:
        s = s.scatter(-1, torch.topk(s, floor, dim=-1).indices, float("-inf"))  # each head's floor, given
    extra = n * k - n * floor
    if extra > 0:
        chosen = torch.topk(s.reshape(b, n * t), extra, dim=-1).indices // t
        rows = torch.arange(b, device=s.device)[:, None] * n
        budgets += torch.bincount((chosen + rows).flatten(), minlength=b * n).view(b, n)
    return budgets


@dataclass
class AdaKV(WrapperCompressor):
    """AdaKV (Feng et al., 2024, https://arxiv.org/abs/2407.11550): the layer's total budget (``k`` tokens x
    ``H_kv`` heads) is spread over its heads by score concentration, so heads whose mass sits on few tokens give
    budget to heads whose mass is spread out; every head keeps at least ``max(1, safeguard * k)`` tokens.

    Budgets differ per head, so the cache keeps ``max_h k_h`` slots per head and masks the surplus
    (``masks_only=True`` in the report when the budgets are uneven; see ``compress.kv.base``).

    Parameters
    ----------
    inner:
        The compressor that scores tokens (any but an adaptive one).
    safeguard:
        Share of the uniform budget every head keeps at least (the paper's safeguard), in [0, 1].
    ratio, budget, n_sink, protect_last:
        As in :class:`KVCompressor`.
    """

    safeguard: float = option(0.2, low=0, high=1)
    name: ClassVar[str] = "adaptive"

    def check_inner(self) -> None:
        if not isinstance(self.inner, KVCompressor) or isinstance(self.inner, AdaKV):
            raise ConfigError(f"{self.name} needs a non-adaptive inner compressor, got {self.inner!r}")
        self.attention_based = self.inner.attention_based

    def floor(self, k: int) -> int:
        """Tokens every head keeps at least, of a uniform budget ``k``."""
        return min(k, max(1, int(self.safeguard * k)))

    def head_budgets(self, scores: torch.Tensor, protected: torch.Tensor, k: int, x: LayerPrefill) -> torch.Tensor:
        return adaptive_budgets(scores, protected, k, self.floor(k))

    def budget_rule(self, t: int, n_layers: int, n_kv: int) -> KVBudget:
        k = self.n_keep(t)
        return KVBudget(t if k >= t else self.floor(k), n_layers * n_kv * k)


@dataclass
class GlobalAdaKV(AdaKV):
    """AdaKV (https://arxiv.org/abs/2407.11550) allocating over the whole cache: one pool of ``L x H_kv x k`` entries shared by every layer and head
    (the budget moves between layers too, as CAKE and PyramidKV argue it should, but measured per prompt rather
    than fixed). Each head keeps at least ``max(1, safeguard * k)`` of its best tokens. Each layer is scored as it is
    prefilled; the selection waits for the last layer, so until then the prefill holds the full cache. Layers end
    up with caches of different lengths and heads with uneven budgets, enforced by masks.

    Parameters
    ----------
    ratio, budget, n_sink, protect_last, inner, safeguard:
        As in :class:`AdaKV`.
    """

    name: ClassVar[str] = "global"

    def keep(self, x: LayerPrefill, k: int) -> None:
        pending = x.call.gather(x.layer, self.checked_score(x))
        if pending is None:
            return
        scores = torch.cat([s for _, s in pending], dim=1)  # (B, L x H_kv, T): every head of every layer
        prot, floor = x.call.protected_floor(x.keys.shape[-2], scores.device)
        budgets = adaptive_budgets(scores, prot, k, self.floor(k))
        h = x.keys.shape[1]
        for i, (lay, s) in enumerate(pending):
            idx, mask = self.select(torch.maximum(s, floor), k, budgets[:, i * h : (i + 1) * h])
            self.prune_layer(x.call, lay, idx, torch.ones_like(idx, dtype=torch.bool) if mask is None else mask)
