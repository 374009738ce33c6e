"""Retrieval heads get more (DuoAttention, Xiao et al., 2024; RazorAttention, Tang et al., 2024), at the same total.

Copying a name or a date out of the context is the work of a few retrieval heads (induction and copying heads);
the other heads mostly read nearby and structural tokens. Losses under heavy compression look like failed copies
("Walter Damros" for "Walter Damrosch"), so this wrapper gives the retrieval heads found by ``razor``'s calibration
(the top ``top_frac`` of key/value heads), or the best of a head-score file measured on the task
(``scores=``, made by ``bench/kv_heads.py``: attention that correct answers' tokens pay to their copies in the
passages), ``boost`` times the uniform budget, and the other heads what is left of
the same total (``L x H_kv x k`` entries); every head chooses its tokens by the inner method's scores. Unlike
``razor`` (full cache for retrieval heads on top of the budget), the mean budget stays the uniform one.

Budgets differ per head, so layers with a retrieval head keep padded slots hidden by masks (``masks_only``).
``per_layer=True`` spreads each layer's share evenly over its heads instead (a layer with one retrieval head of
two keeps the mean of the two budgets in both): the cache then holds exactly the budget, with layers of different
lengths (as ``pyramid``), and nothing is hidden by masks.

Measured (docs/RESULTS.md, kv-headline-select-gpu, kv-headline-fresh-gpu, kv-per-layer-fresh-gpu; Qwen2.5-0.5B,
NQ-open top 5, query-aware, ratio 0.75): every variant loses far less than SnapKV alone; per-head budgets hold about
0.31 of the full cache's bytes, ``per_layer=True`` holds 0.25 and lost a little more on the same questions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from compress.kv.base import WrapperCompressor
from compress.kv.razor import Razor
from ragcore.attention import decoder_layers, head_counts
from ragcore.errors import ConfigError


@dataclass
class RetrievalHeads(WrapperCompressor):
    top_frac: float = 0.15
    boost: float = 2.0
    scores: str | None = None  # JSON of per-head copy scores from bench/kv_heads.py; None: razor's calibration
    per_layer: bool = False  # True: each layer's heads share its budget evenly (no padded slots)
    retrieval_heads: dict[int, list[int]] | None = field(default=None, metadata={"label": False})  # or calibrated
    name: ClassVar[str] = "retrieval"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.boost, bool) or not isinstance(self.boost, (int, float)) or self.boost < 1:
            raise ConfigError(f"boost must be a number >= 1 (times the uniform budget), got {self.boost!r}")
        if isinstance(self.top_frac, bool) or not isinstance(self.top_frac, (int, float)) or not 0 <= self.top_frac < 1:
            raise ConfigError(f"top_frac must be in [0, 1), got {self.top_frac!r}")
        if not isinstance(self.per_layer, bool):
            raise ConfigError(f"per_layer must be True or False, got {self.per_layer!r}")
        self.attention_based = self.inner.attention_based
        self._n_heads = 0  # key/value heads of the whole model
        self._n_kv = 0  # key/value heads per layer

    def prepare(self, model: nn.Module) -> None:
        super().prepare(model)
        layers = decoder_layers(model)
        self._n_kv = head_counts(layers[0].self_attn)[1]
        self._n_heads = len(layers) * self._n_kv
        if self.retrieval_heads is None:
            if self.scores is None:
                self.retrieval_heads = Razor(top_frac=self.top_frac).calibrate(model)
            else:
                self.retrieval_heads = self.heads_from_scores(len(layers), head_counts(layers[0].self_attn)[1])

    def heads_from_scores(self, n_layers: int, n_kv: int) -> dict[int, list[int]]:
        """The top ``top_frac`` (layer, key/value head) pairs of the ``scores`` file, checked against the model."""
        path = Path(str(self.scores))
        try:
            table = torch.tensor(json.loads(path.read_text())["scores"], dtype=torch.float32)
        except FileNotFoundError:
            raise ConfigError(
                f"retrieval: no head-score file at {str(path)!r} (make one with bench/kv_heads.py)"
            ) from None
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"retrieval: {str(path)!r} is not a head-score file of bench/kv_heads.py: {e}") from None
        if tuple(table.shape) != (n_layers, n_kv):
            raise ConfigError(
                f"retrieval: {str(path)!r} scores {tuple(table.shape)} (layers, kv heads); the model has {(n_layers, n_kv)}"
            )
        n_pick = round(self.top_frac * table.numel())
        heads: dict[int, list[int]] = {}
        for f in torch.topk(table.flatten(), n_pick).indices.tolist() if n_pick else []:
            heads.setdefault(f // n_kv, []).append(f % n_kv)
        return {k: sorted(v) for k, v in sorted(heads.items())}

    def split(self, k: int, t: int) -> tuple[int, int]:
        """(budget of a retrieval head, budget of any other head) for the uniform budget ``k`` of ``t`` tokens."""
        n_ret = sum(len(v) for v in (self.retrieval_heads or {}).values())
        k_ret = min(t, round(self.boost * k))
        rest = self._n_heads - n_ret
        k_other = k if rest <= 0 else max(1, min(t, round((self._n_heads * k - n_ret * k_ret) / rest)))
        return k_ret, k_other

    def layer_keep(self, k: int, t: int, layer: int) -> int:
        if not self.per_layer or k >= t:
            return k
        k_ret, k_other = self.split(k, t)
        n_ret = len((self.retrieval_heads or {}).get(layer, []))
        return max(1, min(t, round((n_ret * k_ret + (self._n_kv - n_ret) * k_other) / self._n_kv)))

    def head_budgets(
        self, scores: torch.Tensor, protected: torch.Tensor, k: int, module: nn.Module
    ) -> torch.Tensor | None:
        if self.per_layer:  # the layer's share came through layer_keep, the same for each of its heads
            return None
        b, h, t = scores.shape
        k_ret, k_other = self.split(k, t)
        budgets = torch.full((b, h), k_other, dtype=torch.long, device=scores.device)
        for head in (self.retrieval_heads or {}).get(int(module.layer_idx), []):
            budgets[:, head] = k_ret
        return budgets

    def layer_lengths_vary(self) -> bool:
        return self.per_layer
