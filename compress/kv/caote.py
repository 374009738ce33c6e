"""CAOTE: value-aware correction of any attention-based score."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from compress.kv.base import KVCompressor, LayerPrefill, WrapperCompressor
from ragcore.errors import ConfigError
from ragcore.registry import registry


@dataclass
class CAOTE(WrapperCompressor):
    """CAOTE (Goel et al., 2025, https://arxiv.org/abs/2504.14051): evicting token j, which holds attention a_j,
    changes the attention output o = sum_i a_i v_i into (o - a_j v_j) / (1 - a_j); the change has norm
    a_j / (1 - a_j) * ||v_j - o||, and that is the score (higher = more harmful to evict = keep). ``a`` is the inner
    compressor's score normalised to a distribution over the tokens, so the inner method must be attention-based.

    Parameters
    ----------
    inner:
        An attention-based compressor (snapkv, h2o, tova, a2sf, expected_attention).
    ratio, budget, n_sink, protect_last:
        As in :class:`KVCompressor`.
    """

    name: ClassVar[str] = "caote"
    attention_based: ClassVar[bool] = True

    def check_inner(self) -> None:
        if not isinstance(self.inner, KVCompressor) or not self.inner.attention_based:
            ok = [n for n, c in registry("kv_compressor").classes().items() if c.attention_based and n != self.name]
            raise ConfigError(
                f"caote needs an attention-based inner compressor, got {self.inner!r}; options: {', '.join(ok)}"
            )

    def score(self, x: LayerPrefill) -> torch.Tensor:
        s = self.inner.score(x).float().clamp_min(0)
        a = s / s.sum(-1, keepdim=True).clamp_min(1e-12)  # (B, H_kv, T)
        v = x.values.float()
        o = torch.einsum("bht,bhtd->bhd", a, v)
        change = (v - o[:, :, None]).norm(dim=-1)
        return a / (1 - a).clamp_min(1e-6) * change
