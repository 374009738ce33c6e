"""The KV-cache compressor base: score tokens per key/value head, keep the top ones, prune the cache.

A compressor is a small dataclass with one ``score()``; this base turns scores into kept positions and
prunes through :mod:`ragcore.cache`. ``with compressor.apply(model) as report:`` registers hooks on every
layer's ``self_attn``; a layer is compressed right after its first forward with more than one query row
(the prefill) on a given cache, never during decoding; hooks are always removed when the block ends.

Uneven per-head budgets (``adaptive``, ``razor``): a cache tensor is rectangular, so each layer keeps
``max_h k_h`` positions physically and the slots beyond a head's own budget are hidden from attention by a
per-head mask that a pre-hook on ``self_attn`` passes as a 4D ``attention_mask``; the report then says
``masks_only=True`` and ``kv_bytes_after`` counts the padded (physical) cache. The masks act only inside the
``apply`` block, so decoding must run inside it too (``Generator`` does that).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import nn

from ragcore import cache as kvcache
from ragcore.attention import decoder_layers, head_counts, rows_attention
from ragcore.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class KVReport:
    """What one compression did. Token counts are per layer; ``tokens_kept`` per layer and key/value head."""

    compressor: str
    kv_bytes_before: int = 0
    kv_bytes_after: int = 0
    tokens_before: dict[int, int] = field(default_factory=dict)
    tokens_kept: dict[int, list[int]] = field(default_factory=dict)  # effective (what attention can see)
    cache_len: dict[int, int] = field(default_factory=dict)  # physical length of each layer's tensors
    masks_only: bool = False  # True: some heads' budgets are enforced by masks over padded slots

    def reset(self, compressor: str) -> None:
        """Start over in place (the object handed out by ``apply`` stays the one that is filled)."""
        self.__init__(compressor)  # type: ignore[misc]

    def to_dict(self) -> dict[str, Any]:
        return {
            "compressor": self.compressor,
            "kv_bytes_before": self.kv_bytes_before,
            "kv_bytes_after": self.kv_bytes_after,
            "tokens_before": dict(self.tokens_before),
            "tokens_kept": {k: list(v) for k, v in self.tokens_kept.items()},
            "cache_len": dict(self.cache_len),
            "masks_only": self.masks_only,
        }


def group_mean(x: torch.Tensor, n_kv: int) -> torch.Tensor:
    """Average query heads (dim 1, size H) over their key/value group: (B, H, ...) -> (B, H_kv, ...)."""
    b, h = x.shape[:2]
    return x.view(b, n_kv, h // n_kv, *x.shape[2:]).mean(2)


def as_distribution(scores: torch.Tensor) -> torch.Tensor:
    """Each head's scores (..., T) shifted to >= 0 and normalised to sum 1, so heads (and layers) compare."""
    s = scores - scores.amin(-1, keepdim=True)
    return s / s.sum(-1, keepdim=True).clamp_min(1e-12)


def priority_floor(protected: torch.Tensor) -> torch.Tensor:
    """Per position, the least selection key: above any score (1e30 and up, the most recent highest) where the
    position is protected, -inf elsewhere. ``max(scores, floor)`` is then the selection order: protected
    positions first (the most recent of them first, should the budget be smaller than they are), the others by
    score; exact for scores below 1e30, and one element-wise kernel per layer."""
    t = protected.shape[-1]
    pos = torch.arange(t, device=protected.device, dtype=torch.float32) / t
    return torch.where(protected, 1e30 * (1 + pos), float("-inf"))


@dataclass
class KVCompressor:
    """Base of KV-cache compressors. ``score()`` (B, H_kv, T): higher = keep.

    ``ratio``: fraction of the prefilled tokens removed per head, in [0, 1); ``budget``: tokens kept per head
    (overrides ``ratio``). ``n_sink`` first and ``protect_last`` last tokens are always kept.
    """

    ratio: float = 0.0
    budget: int | None = None
    n_sink: int = 0
    protect_last: int = 0

    name: ClassVar[str] = "base"
    attention_based: ClassVar[bool] = False  # scores are attention-like masses (>= 0), usable by caote

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 <= self.ratio < 1:
            raise ConfigError(f"ratio must be a fraction removed in [0, 1), got {self.ratio!r}")
        if self.budget is not None and (
            isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1
        ):
            raise ConfigError(f"budget must be a positive number of tokens per head, got {self.budget!r}")
        for f in ("n_sink", "protect_last"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{f} must be a non-negative integer, got {v!r}")
        self._model: nn.Module | None = None
        self._cache_id: int | None = None
        self._done: set[int] = set()
        self._masks: dict[int, torch.Tensor] = {}
        self._floors: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        self.report = KVReport(self.label)

    @property
    def label(self) -> str:
        """Name for reports, with the options that differ from their defaults (``snapkv(window=64)``; wrappers add
        their inner method); ``get_compressor(label)`` builds the same compressor. Fields whose metadata says
        ``label=False`` (state a calibration fills in) are left out."""
        opts = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if f.init
            and f.name not in ("ratio", "budget", "inner")
            and f.default is not MISSING
            and f.metadata.get("label", True)
            and getattr(self, f.name) != f.default
        ]
        return f"{self.name}({', '.join(opts)})" if opts else self.name

    # ---- what subclasses define --------------------------------------------------------------------------
    def score(
        self,
        module: nn.Module,
        hidden: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        key_offset: int = 0,
    ) -> torch.Tensor:
        """Scores (B, H_kv, T_k) of the cached positions; ``hidden`` is the layer's normed input of the prefill
        (its rows are the last ``T_k - key_offset`` keys)."""
        raise NotImplementedError

    def protected(self, t: int, device: torch.device) -> torch.Tensor:
        """Positions (T,) bool that are always kept (sinks, last tokens); subclasses may add to it."""
        keep = torch.zeros(t, dtype=torch.bool, device=device)
        keep[: self.n_sink] = True
        if self.protect_last:
            keep[max(t - self.protect_last, 0) :] = True
        return keep

    def head_budgets(
        self, scores: torch.Tensor, protected: torch.Tensor, k: int, module: nn.Module
    ) -> torch.Tensor | None:
        """Tokens kept per head (B, H_kv), or None for ``k`` everywhere. Head-adaptive methods override."""
        return None

    # ---- selection -----------------------------------------------------------------------------------------
    def n_keep(self, t: int) -> int:
        """Tokens kept per head out of ``t``."""
        if self.budget is not None:
            return min(self.budget, t)
        return max(1, t - int(self.ratio * t))

    def select(
        self, scores: torch.Tensor, k: int, budgets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Kept positions (B, H_kv, k'), best first, and a (B, H_kv, k') visibility mask or None. The order of a
        cache's entries does not matter to attention (keys were rotated at their own positions), so they are
        not sorted back.

        Without ``budgets``: the top ``k`` per head. With uneven ``budgets``: the top ``max(budgets)`` per head
        are kept physically and the mask hides each head's slots beyond its own budget.
        """
        t = scores.shape[-1]
        kmax = k if budgets is None else int(budgets.max())
        kmax = max(1, min(kmax, t))
        idx = torch.topk(scores, kmax, dim=-1).indices  # slot r holds the r-th best position
        if budgets is None or bool((budgets == kmax).all()):
            return idx, None
        return idx, torch.arange(kmax, device=scores.device)[None, None, :] < budgets[..., None]

    def layer_keep(self, k: int, t: int, layer: int) -> int:
        """Tokens per head that ``layer`` keeps, given the mean budget ``k`` of ``t``; budgets across layers
        (``pyramid``) override this, and ``layer_lengths_vary`` with it."""
        return k

    def layer_lengths_vary(self) -> bool:
        """True where ``layer_keep`` gives layers different lengths. transformers builds one attention mask from the
        first layer's length for tokens fed together after the prefill, so every layer then records an all-visible
        mask and the pre-hook passes each layer a mask of its own length (nothing is hidden: not ``masks_only``)."""
        return False

    # ---- the per-layer step --------------------------------------------------------------------------------
    @torch.no_grad()
    def compress_layer(
        self,
        module: nn.Module,
        hidden: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        cache: Any,
        layer: int,
    ) -> None:
        keys, values = kvcache.get_kv(cache, layer)
        t = keys.shape[-2]
        before = keys.numel() * keys.element_size() + values.numel() * values.element_size()
        k = self.layer_keep(self.n_keep(t), t, layer)
        self.report.tokens_before[layer] = t
        self.report.kv_bytes_before += before
        h_kv = keys.shape[1]
        if k >= t:  # nothing to remove: leave the cache untouched
            self.report.tokens_kept[layer] = [t] * h_kv
            self.report.cache_len[layer] = t
            self.report.kv_bytes_after += before
            return
        self.keep(module, hidden, position_embeddings, cache, layer, k)

    def keep(
        self,
        module: nn.Module,
        hidden: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        cache: Any,
        layer: int,
        k: int,
    ) -> None:
        """Choose the ``k`` positions per head that ``layer`` keeps and prune it (``prune_layer``); a selection
        across layers (``layers:``) overrides this."""
        keys, values = kvcache.get_kv(cache, layer)
        scores = self.checked_score(module, hidden, keys, values, position_embeddings)
        prot, floor = self._protected_floor(keys.shape[-2], scores.device)
        budgets = self.head_budgets(scores, prot, k, module)
        idx, mask = self.select(torch.maximum(scores, floor), k, budgets)
        if budgets is not None and mask is None:  # head-wise budgets, even here: every layer of them gets a mask
            mask = torch.ones_like(idx, dtype=torch.bool)
        self.prune_layer(cache, layer, idx, mask)

    def checked_score(
        self,
        module: nn.Module,
        hidden: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """``score()`` as float32, its shape checked against the cache's (B, H_kv, T)."""
        b, h_kv, t = keys.shape[:3]
        scores = self.score(module, hidden, keys, values, position_embeddings, key_offset=t - hidden.shape[1])
        scores = scores.float()
        if tuple(scores.shape) != (b, h_kv, t):
            raise RuntimeError(f"{self.name}.score returned {tuple(scores.shape)}, expected {(b, h_kv, t)}")
        return scores

    def prune_layer(self, cache: Any, layer: int, idx: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Keep positions ``idx`` (B, H_kv, k) of ``layer`` and record it in the report; ``mask`` (B, H_kv, k) is
        the per-head visibility of the kept slots (head-wise budgets), ``None`` for all visible."""
        kvcache.prune(cache, layer, idx)
        h_kv = idx.shape[1]
        if mask is None and self.layer_lengths_vary():
            mask = torch.ones_like(idx, dtype=torch.bool)
        if mask is not None:
            self._masks[layer] = mask
            self.report.masks_only = self.report.masks_only or not bool(mask.all())
            kept = mask.sum(-1)[0].tolist()
        else:
            kept = [idx.shape[-1]] * h_kv
        self.report.tokens_kept[layer] = [int(x) for x in kept]
        self.report.cache_len[layer] = idx.shape[-1]
        k2, v2 = kvcache.get_kv(cache, layer)
        self.report.kv_bytes_after += k2.numel() * k2.element_size() + v2.numel() * v2.element_size()

    def head_masks(self) -> dict[int, torch.Tensor]:
        """Per layer, the (B, H_kv, T_c) visibility of the cache slots after an uneven per-head compression (only
        inside ``apply``, for the cache it compressed last); empty when every head keeps all its slots."""
        return dict(self._masks)

    def _protected_floor(self, t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``protected(t)`` and its ``priority_floor``, built once per length and device (every layer of a
        prefill has the same length, so the other layers reuse them)."""
        key = (t, device)
        if key not in self._floors:
            prot = self.protected(t, device)
            self._floors = {key: (prot, priority_floor(prot))}
        return self._floors[key]

    # ---- hooks ---------------------------------------------------------------------------------------------
    def _start(self, cache: Any) -> None:
        """A new cache seen: forget the previous one's state."""
        self._cache_id = id(cache)
        self._done = set()
        self._masks = {}
        self.report.reset(self.label)

    def _post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        cache = kvcache.from_call(kwargs)
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        pe = kwargs.get("position_embeddings")
        if cache is None or hidden is None or pe is None:
            return
        if id(cache) != self._cache_id:
            self._start(cache)
        layer = module.layer_idx
        if hidden.shape[1] <= 1 or layer in self._done:  # decoding, or already compressed
            return
        self._done.add(layer)
        self.compress_layer(module, hidden, pe, cache, layer)

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        cache = kvcache.from_call(kwargs)
        layer = module.layer_idx
        if cache is None or id(cache) != self._cache_id or layer not in self._masks:
            return None
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        keep = self._masks[layer]  # (B, H_kv, T_c)
        past, q = kvcache.seq_len(cache, layer), hidden.shape[1]
        n_h, n_kv, _ = head_counts(module)
        vis = torch.ones(keep.shape[0], n_kv, past + q, dtype=torch.bool, device=hidden.device)
        vis[..., : keep.shape[-1]] = keep
        causal = (
            torch.arange(past + q, device=hidden.device)[None, :]
            <= (past + torch.arange(q, device=hidden.device))[:, None]
        )
        full = (vis[:, :, None, :] & causal[None, None]).repeat_interleave(n_h // n_kv, dim=1)  # (B, H, q, K)
        if getattr(module.config, "_attn_implementation", "sdpa") == "eager":
            add = torch.zeros(full.shape, dtype=hidden.dtype, device=hidden.device)
            full = add.masked_fill(~full, torch.finfo(hidden.dtype).min)
        kwargs = dict(kwargs)
        kwargs["attention_mask"] = full
        return args, kwargs

    @contextmanager
    def apply(self, model: nn.Module) -> Iterator[KVReport]:
        """Compress every layer's cache right after its prefill forward inside this block; yields the report
        (filled as layers are compressed). Hooks are removed when the block ends, also on errors."""
        self._model = model
        self._cache_id = None
        self._done, self._masks, self._floors = set(), {}, {}
        self.report = KVReport(self.label)
        self.prepare(model)
        handles = []
        try:
            for layer in decoder_layers(model):
                attn = layer.self_attn
                handles.append(attn.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
                handles.append(attn.register_forward_hook(self._post_hook, with_kwargs=True))
            yield self.report
        finally:
            for hd in handles:
                hd.remove()
            self._model = None
            self._masks = {}

    def prepare(self, model: nn.Module) -> None:
        """Called on entering ``apply`` (e.g. calibration); default: nothing."""

    def for_prompt(self, prompt: Any) -> None:
        """Told the ``ragcore.prompt.Prompt`` about to be prefilled (its named token spans), by ``Generator`` right
        before the prefill; default: nothing. Methods that select whole parts of a prompt override this."""

    # ---- helpers for subclasses ----------------------------------------------------------------------------
    @staticmethod
    def attention(
        module: nn.Module,
        hidden: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        rows: torch.Tensor | slice,
        keys: torch.Tensor,
        key_offset: int,
    ) -> torch.Tensor:
        """Attention (B, H, R, T_k) of ``rows`` of ``hidden`` to the cached keys (through ragcore.attention)."""
        return rows_attention(module, hidden, position_embeddings, rows, keys=keys, key_offset=key_offset)

    def chunked_attention_sum(
        self,
        module: nn.Module,
        hidden: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        keys: torch.Tensor,
        key_offset: int,
        weights: torch.Tensor | None = None,
        chunk: int = 256,
    ) -> torch.Tensor:
        """Sum over all rows of ``hidden`` (optionally weighted per row, (R,)) of their attention, (B, H, T_k),
        computed ``chunk`` rows at a time so memory stays O(chunk x T)."""
        t_q = hidden.shape[1]
        total = None
        for s in range(0, t_q, chunk):
            rows = slice(s, min(s + chunk, t_q))
            a = self.attention(module, hidden, position_embeddings, rows, keys, key_offset)
            if weights is not None:
                a = a * weights[rows].to(a.dtype)[None, None, :, None]
            part = a.sum(2)
            total = part if total is None else total + part
        return total


@dataclass
class WrapperCompressor(KVCompressor):
    """A compressor around an ``inner`` one (a name or an instance): it keeps what the inner one protects,
    prepares it, and by default scores with it. Subclasses check the inner kind in ``check_inner``."""

    inner: KVCompressor | str = "snapkv"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.inner, str):
            from compress.kv import get_compressor

            self.inner = get_compressor(self.inner)
        self.check_inner()

    def check_inner(self) -> None:
        if not isinstance(self.inner, KVCompressor):
            raise ConfigError(f"{self.name} needs an inner compressor, got {self.inner!r}")

    @property
    def label(self) -> str:
        inner = self.inner.label if isinstance(self.inner, KVCompressor) else self.inner
        return f"{super().label}:{inner}"

    def protected(self, t: int, device: torch.device) -> torch.Tensor:
        return super().protected(t, device) | self.inner.protected(t, device)

    def prepare(self, model: nn.Module) -> None:
        self.inner._model = model
        self.inner.prepare(model)

    def for_prompt(self, prompt: Any) -> None:
        self.inner.for_prompt(prompt)

    def score(
        self,
        module: nn.Module,
        hidden: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        key_offset: int = 0,
    ) -> torch.Tensor:
        return self.inner.score(module, hidden, keys, values, position_embeddings, key_offset)


class CrossLayer:
    """Mixin for selections that need every layer's scores before pruning any (``layers:``, ``global:``): ``gather``
    holds each layer's entry until the prefill's last layer has been scored, then hands all of them over. Until
    then the layers keep their full cache, so the prefill's peak memory is that of an uncompressed one."""

    _n_layers: int = 0

    def prepare(self, model: nn.Module) -> None:
        super().prepare(model)  # type: ignore[misc]
        self._n_layers = len(decoder_layers(model))
        self._pending: list[tuple[int, Any]] = []

    def _start(self, cache: Any) -> None:
        super()._start(cache)  # type: ignore[misc]
        self._pending = []

    def gather(self, layer: int, entry: Any) -> list[tuple[int, Any]] | None:
        """Hold ``(layer, entry)``; after the last layer, all held pairs in layer order (and forget them)."""
        self._pending.append((layer, entry))
        if len(self._pending) < self._n_layers:
            return None
        out, self._pending = self._pending, []
        return out
