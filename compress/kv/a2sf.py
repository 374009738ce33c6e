"""A2SF: accumulated attention with a forgetting factor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from compress.kv.h2o import H2O
from ragcore.stages import check_number


@dataclass
class A2SF(H2O):
    """A2SF (Jo & Shin, 2024, https://arxiv.org/abs/2407.20485): H2O's accumulation where query row ``i`` of ``T``
    counts ``forgetting ** (T - 1 - i)``, so recent queries weigh more (H2O is ``forgetting = 1``).

    Parameters
    ----------
    ratio, budget, n_sink, protect_last, chunk:
        As in :class:`H2O`.
    window:
        Most recent tokens always kept (default 0: the forgetting factor already favours them).
    forgetting:
        Factor in (0, 1] by which an older query row's vote shrinks per row of age.
    """

    window: int = 0
    forgetting: float = 0.99
    name: ClassVar[str] = "a2sf"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("forgetting", self.forgetting, 0, 1, low_open=True)

    def row_weights(self, t_q: int, device: torch.device) -> torch.Tensor:
        age = torch.arange(t_q - 1, -1, -1, device=device, dtype=torch.float64)
        return torch.pow(torch.tensor(float(self.forgetting), dtype=torch.float64), age).float()
