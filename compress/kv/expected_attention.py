"""Expected Attention: score each cached key by the attention that future queries are expected to pay it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from compress.kv.base import KVCompressor, LayerPrefill, group_mean
from ragcore.attention import head_counts, project_queries, rotary_embedding, rotate_half
from ragcore.stages import option


@dataclass
class ExpectedAttention(KVCompressor):
    """Expected Attention (Devoto et al., 2025, https://arxiv.org/abs/2510.00636): score each cached key by the
    attention that *future* queries are expected to pay it, estimated before those queries exist.

    1. The un-rotated queries of the next tokens are modelled as Gaussian, q ~ N(mu, Sigma), with mu and Sigma
       (per query head) the mean and covariance of the queries of the last ``n_recent`` prompt tokens.
    2. The rotary embedding of a future position p is a linear map R_p; its mean over the next ``n_future``
       positions, R, gives the rotated query's moments mu' = R mu, Sigma' = R Sigma R^T.
    3. For a Gaussian q, E[exp(s q.k)] = exp(s mu'.k + s^2/2 k^T Sigma' k) in closed form (s = the attention
       scale); normalising over the keys gives an expected attention distribution, averaged over the query heads of
       each key/value group and multiplied by the value norm (plus ``epsilon``), as in the paper.

    Parameters
    ----------
    n_sink:
        Leading tokens always kept.
    n_recent:
        Prompt rows whose queries give the mean and covariance.
    n_future:
        Future positions the rotary map is averaged over.
    use_covariance:
        Add the covariance term (else the mean query alone).
    use_value_norm:
        Multiply by the value norm.
    epsilon:
        Added to the expected attention before the value norm multiplies it.
    ratio, budget, protect_last:
        As in :class:`KVCompressor`.
    """

    n_recent: int = option(128, minimum=1)
    n_future: int = option(512, minimum=1)
    n_sink: int = option(4, minimum=0)
    use_covariance: bool = option(True)
    use_value_norm: bool = option(True)
    epsilon: float = option(1e-2, low=0)
    name: ClassVar[str] = "expected_attention"
    attention_based: ClassVar[bool] = True

    def _future_rotation(self, x: LayerPrefill, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cos and sin (D,) of the rotary embedding over the ``n_future`` positions after the cache."""
        start = x.keys.shape[-2]
        pos = torch.arange(start, start + self.n_future, device=x.hidden.device)[None]
        cos, sin = rotary_embedding(x.call.model, x.hidden[:, :1].float(), pos)
        return cos[0].float().mean(0)[:dim], sin[0].float().mean(0)[:dim]

    def score(self, x: LayerPrefill) -> torch.Tensor:
        n_h, n_kv, d = head_counts(x.module)
        t_q = x.hidden.shape[1]
        q = project_queries(x.module, x.hidden, None, slice(max(t_q - self.n_recent, 0), t_q)).float()  # (B,H,n,D)
        c, s = self._future_rotation(x, d)

        def rot(v: torch.Tensor) -> torch.Tensor:  # the averaged rotation R applied to row vectors
            return v * c + rotate_half(v) * s

        mu = rot(q.mean(2))  # (B, H, D)
        k = x.keys.float().repeat_interleave(n_h // n_kv, dim=1)  # (B, H, T, D)
        scale = float(getattr(x.module, "scaling", d**-0.5))
        logits = scale * torch.einsum("bhd,bhtd->bht", mu, k)
        if self.use_covariance and q.shape[2] > 1:
            qc = q - q.mean(2, keepdim=True)
            cov = torch.einsum("bhnd,bhne->bhde", qc, qc) / (q.shape[2] - 1)  # (B, H, D, D)
            m = rot(torch.eye(d, device=q.device)).T  # R as a matrix: R @ v == rot(v)
            cov = m @ cov @ m.T
            logits = logits + 0.5 * scale**2 * torch.einsum("bhtd,bhde,bhte->bht", k, cov, k)
        scores = group_mean(torch.softmax(logits, dim=-1), n_kv)
        if self.use_value_norm:
            scores = (scores + self.epsilon) * x.values.float().norm(dim=-1)
        return scores
