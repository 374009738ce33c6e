"""Prefill helpers shared by the KV compressor tests."""

from __future__ import annotations

from typing import Any

import torch

from ragcore import cache as kvcache
from tests.helpers import Q, random_ids


def prefill(model, comp, ids: torch.Tensor, question: bool = True) -> tuple[Any, Any]:
    """Prefill ``ids`` under ``comp`` (then feed a question of ``Q`` tokens on the compressed cache): the cache and
    the compressor's call."""
    cache = kvcache.new_cache(model.config)
    with torch.inference_mode(), comp.apply(model, cache) as call:
        kvcache.call(model, cache, input_ids=ids, use_cache=True)
        if question:
            logits = kvcache.feed(model, random_ids(Q, seed=2), cache, ids.shape[1])
            assert torch.isfinite(logits).all()
    return cache, call


def recording(comp, picked: dict) -> Any:
    """``comp`` with its ``prune_layer`` recording each layer's kept indices (and mask) into ``picked``."""
    orig = comp.prune_layer

    def prune_layer(call, layer, idx, mask):
        picked[layer] = (idx.clone(), None if mask is None else mask.clone())
        orig(call, layer, idx, mask)

    object.__setattr__(comp, "prune_layer", prune_layer)
    return comp
