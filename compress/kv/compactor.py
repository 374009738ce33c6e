"""Compactor: question-agnostic scores from the keys' leverage and the context's own attention, in one pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from compress.kv.adaptive import adaptive_budgets
from compress.kv.base import KVBudget, KVCompressor, LayerPrefill, group_mean
from ragcore.attention import project_queries, rotary_embedding, rotate_half
from ragcore.stages import option

RIDGE = 5e-3  # added to each Gram matrix's diagonal (the reference implementation's regulariser)


def zscore(scores: torch.Tensor) -> torch.Tensor:
    """Scores (B, H, T) standardised per batch row over every head and token together, so heads compare.

    A row whose scores are all equal (spread within float rounding: a standard deviation of at most 1e-6 of the
    mean) gives 0 everywhere; standardised, the rounding of its mean alone made it all +-1 (or, its std 0, all
    +-1e4, which saturates the sigmoid of ``Compactor.head_budgets``)."""
    flat = scores.flatten(1)
    mean, std = flat.mean(-1), flat.std(-1, unbiased=False)
    z = (scores - mean[:, None, None]) / std.clamp_min(1e-12)[:, None, None]
    return torch.where((std <= 1e-6 * mean.abs())[:, None, None], torch.zeros_like(z), z)


def leverage_scores(keys: torch.Tensor, chunk: int, ridge: float = RIDGE) -> torch.Tensor:
    """Ridge leverage scores (B, H, T) of un-rotated keys (B, H, T, D), per chunk of ``chunk`` tokens (0: all).

    In each chunk the keys are centred, ``G = X^T X + ridge I`` (D x D) and token ``i`` scores ``x_i^T G^-1 x_i``:
    how far the key lies outside the directions the other keys span. Exact (D is a head's size, 64 or 128, so the
    Gram matrix is small); the paper approximates it through a random sketch, for speed only.

    A chunk's scores sum to about its rank, ``min(n - 1, D)`` for ``n`` keys, so a short chunk scores every key
    high (all near 1 for ``n <= D + 1``). A short last chunk (the reference code's epilogue) is therefore scored
    among the last ``chunk`` keys, overlapping the chunk before it: every score compares a key with ``chunk``
    keys. (Scored on its own, the 51 tokens after 512 of a 563-token smollm2-135m context took 36% of the kept
    (token, head) pairs at ratio 0.75, every one of them, for 9% of the positions.)"""
    b, h, t, d = keys.shape
    step = t if chunk <= 0 else min(chunk, t)
    out = []
    eye = torch.eye(d, device=keys.device, dtype=torch.float32) * ridge
    for s in range(0, t, step):
        n = min(step, t - s)
        x = keys[:, :, t - step : t].float() if n < step else keys[:, :, s : s + step].float()
        x = x - x.mean(-2, keepdim=True)
        g = x.transpose(-1, -2) @ x + eye
        out.append((x * torch.linalg.solve(g, x.transpose(-1, -2)).transpose(-1, -2)).sum(-1)[..., -n:])
    return torch.cat(out, -1).clamp_min(0.0)


def chunk_attention(q: torch.Tensor, keys: torch.Tensor, chunk: int, scale: float) -> torch.Tensor:
    """Attention (B, H_kv, T) each key receives from the queries of its own chunk of ``chunk`` tokens, both
    directions (non-causal), summed over those queries and averaged over the key's query-head group.

    ``q`` (B, H, T, D) and ``keys`` (B, H_kv, T, D), both rotated. A last chunk of ``n < chunk`` tokens adds
    ``(chunk - n) / chunk`` to each of its keys, as if each of the ``chunk - n`` missing queries gave ``1 / chunk``
    to every key: a key's mean score there is ``1 + (chunk - n) / chunk`` against 1 in a full chunk (the chunk
    hands out ``n (2 chunk - n) / chunk``, not ``chunk``), so a short last chunk is favoured. This follows the
    reference kernel's rule (padded query rows give ``1 / chunk``, "preserve attention mass in shorter chunks"),
    whose rows are padded to its 64-row tiles only: it adds ``(ceil(n / 64) 64 - n) / chunk``, the same for
    ``n >= 64`` at ``chunk=128`` and 0.5 less below; kvpress's port adds nothing."""
    n_h, n_kv, t = q.shape[1], keys.shape[1], keys.shape[-2]
    out = []
    for s in range(0, t, chunk):
        qc = q[:, :, s : s + chunk].float()
        kc = keys[:, :, s : s + chunk].float().repeat_interleave(n_h // n_kv, dim=1)
        p = torch.softmax(qc @ kc.transpose(-1, -2) * scale, dim=-1).sum(-2)  # (B, H, n)
        out.append(p + (chunk - p.shape[-1]) / chunk)
    return group_mean(torch.cat(out, -1), n_kv)


@dataclass
class Compactor(KVCompressor):
    """Compactor (Chari & Van Durme, 2025, "Calibrated query-agnostic KV cache compression with approximate
    leverage scores", https://arxiv.org/abs/2507.08143; reference code: vnchari/compactor-vllm): a cached token's
    score in a key/value head blends two question-agnostic signals, each standardised over the layer's heads and
    tokens: the attention it receives from the context's own queries of its chunk, read in both directions
    (non-causal, ``chunk`` tokens), plus ``blend`` times the leverage score of its un-rotated key (how far the
    key lies outside what the chunk's other keys span: rare keys are kept). Scores come from the prefill alone:
    no second pass (KVzip's reconstruction costs about a second prefill).

    With ``scope="layer"`` (the paper's selection) the layer keeps its best ``k x H_kv`` (token, head) pairs, so
    budgets move between its heads (uneven budgets enforced by masks, ``masks_only``); ``scope="head"`` keeps
    ``k`` tokens in every head.

    Parameters
    ----------
    blend:
        Weight of the leverage scores beside the attention scores (the reference code's 0.5).
    chunk:
        Tokens per chunk of the non-causal attention (the reference code's 128).
    leverage_chunk:
        Tokens per chunk of the leverage scores (the reference code's 512; 0: the whole prompt at once).
    scale:
        Multiplier of the query-key products before the softmax (the reference code passes 1.0, sharper than the
        model's own ``1/sqrt(D)``).
    scope:
        ``"layer"`` or ``"head"``, as above.
    safeguard:
        Share of the uniform budget ``k`` that every head keeps at least with ``scope="layer"`` (AdaKV's floor; 0:
        one token, the paper's pure top-k).
    ratio, budget, n_sink, protect_last:
        As in :class:`KVCompressor` (the reference code protects the first 16 and last 64 tokens).
    """

    blend: float = option(0.5, low=0)
    chunk: int = option(128, minimum=1)
    leverage_chunk: int = option(512, minimum=0)
    scale: float = option(1.0, low=0, low_open=True)
    scope: str = option("layer", choices=("layer", "head"))
    safeguard: float = option(0.0, low=0, high=1)
    name: ClassVar[str] = "compactor"

    @staticmethod
    def raw_keys(x: LayerPrefill) -> torch.Tensor:
        """The layer's cached keys (B, H_kv, T, D) with the rotary embedding undone: the keys as projected."""
        if x.key_offset == 0:
            cos, sin = x.position_embeddings
        else:  # keys cached before this prefill: their rotations at positions 0..T-1
            t = x.keys.shape[-2]
            cos, sin = rotary_embedding(x.call.model, x.keys, torch.arange(t, device=x.keys.device)[None])
        cos, sin = cos.to(x.keys.dtype).unsqueeze(1), sin.to(x.keys.dtype).unsqueeze(1)
        return x.keys * cos - rotate_half(x.keys) * sin  # the inverse rotation

    def score(self, x: LayerPrefill) -> torch.Tensor:
        lev = leverage_scores(self.raw_keys(x), self.leverage_chunk)
        q = project_queries(x.module, x.hidden, x.position_embeddings)  # (B, H, T_q, D), rows of this prefill
        att = chunk_attention(q, x.keys[:, :, x.key_offset :], self.chunk, self.scale)
        if x.key_offset:  # no queries of this prefill saw the earlier keys: the layer's mean attention score
            att = torch.cat([att.mean(-1, keepdim=True).expand(-1, -1, x.key_offset), att], -1)
        return zscore(att) + self.blend * zscore(lev)

    def floor(self, k: int) -> int:
        """Tokens every head keeps at least, of a uniform budget ``k`` (``scope="layer"``)."""
        return min(k, max(1, int(self.safeguard * k)))

    def head_budgets(
        self, scores: torch.Tensor, protected: torch.Tensor, k: int, x: LayerPrefill
    ) -> torch.Tensor | None:
        if self.scope == "head":
            return None
        # standardised scores already compare across heads; the sigmoid maps them into (0, 1) keeping their order
        return adaptive_budgets(torch.sigmoid(scores), protected, k, self.floor(k), normalise=False)

    def budget_rule(self, t: int, n_layers: int, n_kv: int) -> KVBudget:
        if self.scope == "head":
            return super().budget_rule(t, n_layers, n_kv)
        k = self.n_keep(t)
        return KVBudget(t if k >= t else self.floor(k), n_layers * n_kv * k)
