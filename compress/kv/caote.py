"""CAOTE (Goel et al., 2025): value-aware correction of any attention-based score.

Evicting token j, which holds attention a_j, changes the attention output o = sum_i a_i v_i into
(o - a_j v_j) / (1 - a_j); the change has norm a_j / (1 - a_j) * ||v_j - o||. That is the score (higher =
more harmful to evict = keep). ``a`` is the inner compressor's score normalised to a distribution over the
tokens, so the inner method must be attention-based (snapkv, h2o, tova, a2sf, expected_attention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from compress.kv.base import KVCompressor, WrapperCompressor
from ragcore.errors import ConfigError


@dataclass
class CAOTE(WrapperCompressor):
    name: ClassVar[str] = "caote"
    attention_based: ClassVar[bool] = True

    def check_inner(self) -> None:
        if not isinstance(self.inner, KVCompressor) or not self.inner.attention_based:
            from compress.kv import COMPRESSORS

            ok = [n for n, c in COMPRESSORS.items() if c.attention_based and n != self.name]
            raise ConfigError(
                f"caote needs an attention-based inner compressor, got {self.inner!r}; options: {', '.join(ok)}"
            )

    def score(
        self,
        module: nn.Module,
        hidden: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        key_offset: int = 0,
    ) -> torch.Tensor:
        s = self.inner.score(module, hidden, keys, values, position_embeddings, key_offset).float().clamp_min(0)
        a = s / s.sum(-1, keepdim=True).clamp_min(1e-12)  # (B, H_kv, T)
        v = values.float()
        o = torch.einsum("bht,bhtd->bhd", a, v)
        change = (v - o[:, :, None]).norm(dim=-1)
        return a / (1 - a).clamp_min(1e-6) * change
