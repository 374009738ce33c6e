"""RazorAttention-style compression: retrieval heads keep the full cache, the others a recent window."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from compress.kv.base import KVBudget, KVCompressor, LayerPrefill
from compress.kv.heads import induction_scores
from ragcore.stages import option

logger = logging.getLogger(__name__)


@dataclass
class Razor(KVCompressor):
    """RazorAttention (Tang et al., 2024, https://arxiv.org/abs/2407.15891): retrieval heads keep the full cache,
    every other head keeps the attention sinks and a recent window (its budget ``k``). The paper's compensation token
    for the dropped part of non-retrieval heads is left out.

    Retrieval heads come from :func:`compress.kv.heads.induction_scores` (calibrated on entering ``apply`` when
    none are given): the top ``top_frac`` of (layer, key/value head) pairs. Budgets differ per head, so a layer
    with a retrieval head keeps all its slots and masks the rest (``masks_only=True`` in the report).

    Parameters
    ----------
    n_sink:
        Leading tokens always kept.
    top_frac:
        Share of key/value heads that are retrieval heads, in [0, 1].
    n_calib_tokens:
        Length of the random sequence of the calibration (>= 2).
    seed:
        Seed of the calibration sequence.
    retrieval_heads:
        ``{layer: [kv head, ...]}``; None: calibrated (calibrated state is left out of the label).
    ratio, budget, protect_last:
        As in :class:`KVCompressor`.
    """

    n_sink: int = option(4, minimum=0)
    top_frac: float = option(0.15, low=0, high=1)
    n_calib_tokens: int = option(64, minimum=2)
    seed: int = option(0)
    retrieval_heads: dict[int, list[int]] | None = option(None, kind=dict, label=False)
    name: ClassVar[str] = "razor"

    def calibrate(self, model: nn.Module) -> dict[int, list[int]]:
        """Find the retrieval heads of ``model``; stores and returns {layer: [kv head, ...]}."""
        scores = induction_scores(model, self.n_calib_tokens, self.seed)
        self.retrieval_heads = scores.top(self.top_frac)
        logger.info("razor: retrieval heads %s", self.retrieval_heads)
        return self.retrieval_heads

    def prepare(self, model: nn.Module) -> None:
        if self.retrieval_heads is None:
            self.calibrate(model)

    def score(self, x: LayerPrefill) -> torch.Tensor:
        b, h, t = x.keys.shape[:3]
        return torch.arange(t, device=x.keys.device, dtype=torch.float32).expand(b, h, t)  # recency

    def head_budgets(self, scores: torch.Tensor, protected: torch.Tensor, k: int, x: LayerPrefill) -> torch.Tensor:
        b, h, t = scores.shape
        budgets = torch.full((b, h), k, dtype=torch.long, device=scores.device)
        for head in (self.retrieval_heads or {}).get(x.layer, []):
            budgets[:, head] = t
        return budgets

    def budget_rule(self, t: int, n_layers: int, n_kv: int) -> KVBudget:
        k = self.n_keep(t)
        n_ret = sum(len(v) for v in (self.retrieval_heads or {}).values())
        return KVBudget(min(k, t), (n_layers * n_kv - n_ret) * k + n_ret * t)
