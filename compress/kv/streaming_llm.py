"""StreamingLLM (Xiao et al., 2023): keep the first ``n_sink`` tokens (attention sinks) and the most recent ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from compress.kv.base import KVCompressor


@dataclass
class StreamingLLM(KVCompressor):
    n_sink: int = 4
    name: ClassVar[str] = "streaming_llm"

    def score(
        self,
        module: nn.Module,
        hidden: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        key_offset: int = 0,
    ) -> torch.Tensor:
        b, h, t = keys.shape[:3]
        return torch.arange(t, device=keys.device, dtype=torch.float32).expand(b, h, t)  # recency
