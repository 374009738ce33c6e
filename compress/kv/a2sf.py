"""A2SF: accumulated attention with a forgetting factor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from compress.kv.h2o import H2O
from ragcore.stages import option


@dataclass
class A2SF(H2O):
    """A2SF (Jo & Shin, 2024, https://arxiv.org/abs/2407.20485): H2O's accumulation where query row ``i`` of ``T``
    counts ``forgetting ** (T - 1 - i)``, so recent queries weigh more (H2O is ``forgetting = 1``).

    Parameters
    ----------
    window:
        Most recent tokens always kept (default 0: the forgetting factor already favours them).
    forgetting:
        Factor in (0, 1] by which an older query row's vote shrinks per row of age.
    ratio, budget, n_sink, protect_last, chunk:
        As in :class:`H2O`.
    """

    window: int = option(0, minimum=0)
    forgetting: float = option(0.99, low=0, high=1, low_open=True)
    name: ClassVar[str] = "a2sf"

    def row_weights(self, t_q: int, device: torch.device) -> torch.Tensor:
        age = torch.arange(t_q - 1, -1, -1, device=device, dtype=torch.float64)
        return torch.pow(torch.tensor(float(self.forgetting), dtype=torch.float64), age).float()
