"""A2SF (Jo & Shin, 2024): accumulated attention with a forgetting factor. Query row ``i`` of ``T`` contributes
with weight ``forgetting ** (T - 1 - i)``, so recent queries count more than old ones (H2O is
``forgetting = 1``). Chunked like H2O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from compress.kv.h2o import H2O
from ragcore.errors import ConfigError


@dataclass
class A2SF(H2O):
    window: int = 0
    forgetting: float = 0.99
    name: ClassVar[str] = "a2sf"

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            isinstance(self.forgetting, bool)
            or not isinstance(self.forgetting, (int, float))
            or not 0 < self.forgetting <= 1
        ):
            raise ConfigError(f"forgetting must be in (0, 1], got {self.forgetting!r}")

    def row_weights(self, t_q: int, device: torch.device) -> torch.Tensor:
        age = torch.arange(t_q - 1, -1, -1, device=device, dtype=torch.float64)
        return torch.pow(torch.tensor(float(self.forgetting), dtype=torch.float64), age).float()
