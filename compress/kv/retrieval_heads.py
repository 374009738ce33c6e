"""Retrieval heads get more, at the same total (DuoAttention / RazorAttention at a fixed budget)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from compress.kv.base import KVBudget, LayerPrefill, WrapperCompressor
from compress.kv.heads import HeadScores, head_shape, induction_scores
from ragcore.stages import option


@dataclass
class RetrievalHeads(WrapperCompressor):
    """Boosted retrieval heads at the uniform total (DuoAttention, Xiao et al., 2024,
    https://arxiv.org/abs/2410.10819; RazorAttention, Tang et al., 2024, https://arxiv.org/abs/2407.15891).

    Copying a name or a date out of the context is the work of a few retrieval heads; losses under heavy
    compression look like failed copies ("Walter Damros" for "Walter Damrosch"). The retrieval heads (the top
    ``top_frac`` of key/value heads, by :func:`compress.kv.heads.induction_scores` or by a head-score file of
    :func:`compress.kv.heads.copy_scores`) get ``boost`` times the uniform budget and the other heads share what is
    left of the same total (``L x H_kv x k`` entries); every head chooses its tokens by the inner method's scores.
    Unlike ``razor``, the mean budget stays the uniform one. Measured: docs/RESULTS.md, kv-headline-fresh-gpu and
    kv-per-layer-fresh-gpu.

    Budgets differ per head, so layers with a retrieval head keep padded slots hidden by masks (``masks_only``);
    ``per_layer=True`` spreads each layer's share evenly over its heads instead, so the cache holds exactly the
    budget, with layers of different lengths.

    Parameters
    ----------
    inner:
        The compressor that chooses each head's tokens.
    top_frac:
        Share of key/value heads that are retrieval heads, in [0, 1).
    boost:
        A retrieval head's budget in multiples of the uniform one (>= 1).
    scores:
        Path of a head-score file (see :mod:`compress.kv.heads`); None: the induction calibration.
    per_layer:
        Each layer's heads share its budget evenly (no padded slots).
    retrieval_heads:
        ``{layer: [kv head, ...]}``; None: from ``scores`` or calibrated (left out of the label).
    ratio, budget, n_sink, protect_last:
        As in :class:`KVCompressor`.
    """

    top_frac: float = option(0.15, low=0, high=1, high_open=True)
    boost: float = option(2.0, low=1, what="(times the uniform budget)")
    scores: str | None = option(None, kind=str)
    per_layer: bool = option(False)
    retrieval_heads: dict[int, list[int]] | None = option(None, kind=dict, label=False)
    name: ClassVar[str] = "retrieval_heads"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.attention_based = self.inner.attention_based

    def prepare(self, model: nn.Module) -> None:
        super().prepare(model)
        if self.retrieval_heads is None:
            if self.scores is None:
                self.retrieval_heads = induction_scores(model).top(self.top_frac)
            else:
                self.retrieval_heads = HeadScores.load(self.scores, head_shape(model)).top(self.top_frac)

    def split(self, k: int, t: int, n_heads: int) -> tuple[int, int]:
        """(budget of a retrieval head, budget of any other head) for the uniform budget ``k`` of ``t`` tokens in a
        model of ``n_heads`` key/value heads."""
        n_ret = sum(len(v) for v in (self.retrieval_heads or {}).values())
        k_ret = min(t, round(self.boost * k))
        rest = n_heads - n_ret
        k_other = k if rest <= 0 else max(1, min(t, round((n_heads * k - n_ret * k_ret) / rest)))
        return k_ret, k_other

    def layer_keep(self, k: int, t: int, layer: int, n_layers: int, n_kv: int) -> int:
        if not self.per_layer:
            return k
        k_ret, k_other = self.split(k, t, n_layers * n_kv)
        n_ret = len((self.retrieval_heads or {}).get(layer, []))
        return max(1, min(t, round((n_ret * k_ret + (n_kv - n_ret) * k_other) / n_kv)))

    def head_budgets(
        self, scores: torch.Tensor, protected: torch.Tensor, k: int, x: LayerPrefill
    ) -> torch.Tensor | None:
        if self.per_layer:
            return None
        b, h, t = scores.shape
        k_ret, k_other = self.split(k, t, x.call.n_layers * h)
        budgets = torch.full((b, h), k_other, dtype=torch.long, device=scores.device)
        for head in (self.retrieval_heads or {}).get(x.layer, []):
            budgets[:, head] = k_ret
        return budgets

    def layer_lengths_vary(self) -> bool:
        return self.per_layer

    def budget_rule(self, t: int, n_layers: int, n_kv: int) -> KVBudget:
        k = self.n_keep(t)
        if k >= t:
            return KVBudget(t, n_layers * n_kv * t)
        if self.per_layer:
            shares = [self.layer_keep(k, t, li, n_layers, n_kv) for li in range(n_layers)]
            return KVBudget(min(shares), n_kv * sum(shares), slack=n_layers * n_kv)
        k_ret, k_other = self.split(k, t, n_layers * n_kv)
        return KVBudget(min(k_ret, k_other), n_layers * n_kv * k, slack=n_layers * n_kv)
