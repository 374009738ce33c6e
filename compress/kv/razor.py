"""RazorAttention-style compression (Tang et al., 2024): retrieval heads keep the full cache, every other head
keeps the attention sinks and a recent window (its budget ``k``).

Retrieval heads are found by :meth:`Razor.calibrate`: a random token sequence repeated twice; a head whose
queries in the second copy attend to the token just after the previous occurrence (induction) or to the
previous occurrence itself (copying) is a retrieval head. The top ``top_frac`` of (layer, key/value head)
pairs by that score are kept whole. ``apply`` calibrates on first use when no heads were given. (The paper's
compensation token for the dropped part of non-retrieval heads is left out.)

Budgets differ per head, so each layer's cache keeps as many slots as its largest budget (all of them in a
layer with a retrieval head) and masks the rest: the report says ``masks_only=True`` and ``kv_bytes_after``
shrinks only for layers without retrieval heads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from compress.kv.base import KVCompressor, group_mean
from ragcore.attention import attention_to_spans, decoder_layers, head_counts
from ragcore.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class Razor(KVCompressor):
    n_sink: int = 4
    top_frac: float = 0.15
    n_calib_tokens: int = 64
    seed: int = 0
    retrieval_heads: dict[int, list[int]] | None = field(default=None, metadata={"label": False})  # or calibrated
    name: ClassVar[str] = "razor"

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            isinstance(self.top_frac, bool)
            or not isinstance(self.top_frac, (int, float))
            or not 0 <= self.top_frac <= 1
        ):
            raise ConfigError(f"top_frac must be in [0, 1], got {self.top_frac!r}")
        if isinstance(self.n_calib_tokens, bool) or not isinstance(self.n_calib_tokens, int) or self.n_calib_tokens < 2:
            raise ConfigError(f"n_calib_tokens must be an integer >= 2, got {self.n_calib_tokens!r}")
        if self.retrieval_heads is not None and not isinstance(self.retrieval_heads, dict):
            raise ConfigError(f"retrieval_heads must map layer -> list of kv heads, got {self.retrieval_heads!r}")
        self.head_scores: torch.Tensor | None = None

    @torch.inference_mode()
    def calibrate(self, model: nn.Module, tokenizer: Any = None) -> dict[int, list[int]]:
        """Find the retrieval heads of ``model``; stores and returns {layer: [kv head, ...]}."""
        vocab = int(getattr(tokenizer, "vocab_size", 0) or model.config.vocab_size)
        n = self.n_calib_tokens
        gen = torch.Generator().manual_seed(self.seed)
        lo = min(100, vocab // 4)  # skip the first ids, where special tokens usually sit
        seq = torch.randint(lo, vocab, (1, n), generator=gen)
        ids = torch.cat([seq, seq], dim=1)
        att = attention_to_spans(model, ids, rows=(n, 2 * n), reduce_rows=False).tokens  # (L, H, R, T)
        rows = torch.arange(n)
        cur = n + rows
        induction = att[:, :, rows[:-1], cur[:-1] - n + 1].mean(-1)  # to the token after the earlier copy
        copying = att[:, :, rows, cur - n].mean(-1)  # to the earlier copy itself
        per_head = induction + copying  # (L, H)
        layers = decoder_layers(model)
        n_kv = head_counts(layers[0].self_attn)[1]
        kv_scores = group_mean(per_head, n_kv)  # (L, H_kv)
        self.head_scores = kv_scores
        n_pick = round(self.top_frac * kv_scores.numel())
        flat = torch.topk(kv_scores.flatten(), n_pick).indices.tolist() if n_pick else []
        heads: dict[int, list[int]] = {}
        for f in flat:
            heads.setdefault(f // n_kv, []).append(f % n_kv)
        self.retrieval_heads = {k: sorted(v) for k, v in sorted(heads.items())}
        logger.info("razor: %d retrieval heads of %d: %s", n_pick, kv_scores.numel(), self.retrieval_heads)
        return self.retrieval_heads

    def prepare(self, model: nn.Module) -> None:
        if self.retrieval_heads is None:
            self.calibrate(model)

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

    def head_budgets(self, scores: torch.Tensor, protected: torch.Tensor, k: int, module: nn.Module) -> torch.Tensor:
        b, h, t = scores.shape
        budgets = torch.full((b, h), k, dtype=torch.long, device=scores.device)
        for head in (self.retrieval_heads or {}).get(int(module.layer_idx), []):
            budgets[:, head] = t
        return budgets
