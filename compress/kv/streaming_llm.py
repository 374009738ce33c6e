"""StreamingLLM: attention sinks plus a recent window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from compress.kv.base import KVCompressor, LayerPrefill
from ragcore.stages import option


@dataclass
class StreamingLLM(KVCompressor):
    """StreamingLLM (Xiao et al., 2023, https://arxiv.org/abs/2309.17453): keep the first ``n_sink`` tokens
    (attention sinks) and the most recent ones.

    Parameters
    ----------
    n_sink:
        Leading tokens always kept (default 4, as in the paper).
    ratio, budget, protect_last:
        As in :class:`KVCompressor`.
    """

    n_sink: int = option(4, minimum=0)
    name: ClassVar[str] = "streaming_llm"

    def score(self, x: LayerPrefill) -> torch.Tensor:
        b, h, t = x.keys.shape[:3]
        return torch.arange(t, device=x.keys.device, dtype=torch.float32).expand(b, h, t)  # recency
