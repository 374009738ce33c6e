"""Expected Attention (Devoto et al., 2025): score each cached key by the attention that *future* queries are
expected to pay it, estimated before those queries exist.

Approximation, in three steps:

1. The un-rotated queries of the next tokens are modelled as Gaussian, q ~ N(mu, Sigma), with mu and Sigma
   (per query head) the mean and covariance of the queries of the last ``n_recent`` prompt tokens.
2. The rotary embedding of a future position p is a linear map R_p. Averaging it over the next
   ``n_future`` positions, R = mean_p R_p, gives the rotated query's moments mu' = R mu, Sigma' = R Sigma R^T
   (exact for the mean of a fixed rotation mixture only to first order: the mixture is replaced by its mean map).
3. For a Gaussian q, E[exp(s q.k)] = exp(s mu'.k + s^2/2 k^T Sigma' k) in closed form (s = the attention scale);
   normalising over the keys gives an expected attention distribution. It is averaged over the query heads of
   each key/value group and, as in the paper, multiplied by the value norm (a token with a small value changes
   the output little even when attended).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from compress.kv.base import KVCompressor, group_mean
from ragcore.attention import head_counts, rotate_half
from ragcore.errors import ConfigError


@dataclass
class ExpectedAttention(KVCompressor):
    n_recent: int = 128
    n_future: int = 512
    n_sink: int = 4
    use_covariance: bool = True
    use_value_norm: bool = True
    epsilon: float = 1e-2
    name: ClassVar[str] = "expected_attention"
    attention_based: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for f in ("n_recent", "n_future"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{f} must be a positive integer, got {v!r}")
        if not isinstance(self.epsilon, (int, float)) or self.epsilon < 0:
            raise ConfigError(f"epsilon must be >= 0, got {self.epsilon!r}")

    def _future_rotation(self, hidden: torch.Tensor, start: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cos and sin (D,) of the rotary embedding over positions start .. start + n_future - 1."""
        model = self._model
        rotary = getattr(getattr(model, "model", model), "rotary_emb", None) if model is not None else None
        if rotary is None:
            raise ConfigError("expected_attention needs the model's rotary_emb: use it inside compressor.apply(model)")
        pos = torch.arange(start, start + self.n_future, device=hidden.device)[None]
        cos, sin = rotary(hidden[:, :1].float(), pos)
        return cos[0].float().mean(0)[:dim], sin[0].float().mean(0)[:dim]

    def score(
        self,
        module: nn.Module,
        hidden: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        key_offset: int = 0,
    ) -> torch.Tensor:
        n_h, n_kv, d = head_counts(module)
        b, t_q = hidden.shape[:2]
        h = hidden[:, max(t_q - self.n_recent, 0) :]
        q = module.q_proj(h).view(b, h.shape[1], n_h, d).transpose(1, 2)
        if hasattr(module, "q_norm"):
            q = module.q_norm(q)
        q = q.float()  # (B, H, n, D), not rotated
        c, s = self._future_rotation(hidden, keys.shape[-2], d)

        def rot(x: torch.Tensor) -> torch.Tensor:  # the averaged rotation R applied to row vectors
            return x * c + rotate_half(x) * s

        mu = rot(q.mean(2))  # (B, H, D)
        k = keys.float().repeat_interleave(n_h // n_kv, dim=1)  # (B, H, T, D)
        scale = float(getattr(module, "scaling", d**-0.5))
        logits = scale * torch.einsum("bhd,bhtd->bht", mu, k)
        if self.use_covariance and q.shape[2] > 1:
            qc = q - q.mean(2, keepdim=True)
            cov = torch.einsum("bhnd,bhne->bhde", qc, qc) / (q.shape[2] - 1)  # (B, H, D, D)
            m = rot(torch.eye(d, device=q.device)).T  # R as a matrix: R @ x == rot(x)
            cov = m @ cov @ m.T
            logits = logits + 0.5 * scale**2 * torch.einsum("bhtd,bhde,bhte->bht", k, cov, k)
        scores = group_mean(torch.softmax(logits, dim=-1), n_kv)
        if self.use_value_norm:
            scores = (scores + self.epsilon) * values.float().norm(dim=-1)
        return scores
