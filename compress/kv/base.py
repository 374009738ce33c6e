"""The KV-cache compressor base: score tokens per key/value head, keep the top ones, prune the cache.

A compressor is a small dataclass with one ``score(x)`` over a :class:`LayerPrefill`; this base turns scores into
kept positions and prunes through :mod:`ragcore.cache`. ``with compressor.apply(model, cache, prompt) as call:``
registers hooks on every layer's attention module; a layer is compressed right after its first forward with more
than one query row (the prefill) on ``cache``, never during decoding; hooks are always removed when the block ends.

Everything one compression produces (its report, the per-head masks, layers waiting for a cross-layer choice)
lives on the :class:`KVCall` that ``apply`` yields, never on the compressor, so one compressor serves concurrent
generations: each call's hooks act on its own cache only.

Uneven per-head budgets (``adaptive``, ``razor``): a cache tensor is rectangular, so each layer keeps
``max_h k_h`` positions physically and the slots beyond a head's own budget are hidden from attention by a
per-head mask that the cache adapter's pre-hook passes as a 4D ``attention_mask``; the report then says
``masks_only=True`` and ``kv_bytes_after`` counts the padded (physical) cache. The masks act only inside the
``apply`` block, so decoding must run inside it too (``Generator`` does that).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ragcore import cache as kvcache
from ragcore.attention import decoder_layers, head_counts, rows_attention
from ragcore.errors import ConfigError
from ragcore.registry import build
from ragcore.stages import Stage, option

if TYPE_CHECKING:
    from ragcore.prompt import Prompt

_PREPARE = threading.Lock()  # calibrations run once, even when two threads enter apply() at once


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


@dataclass
class KVBudget:
    """A method's budget rule for a prompt of ``t`` tokens, which the conformance suite checks.

    ``min_per_head``: tokens every key/value head of every layer keeps at least; ``total``: entries (layer x head
    x token) the cache keeps visible in all, ``None`` where the method does not fix it; ``slack``: how far the
    total may stray from it (rounding of per-layer or per-head shares)."""

    min_per_head: int
    total: int | None
    slack: int = 0


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
class LayerPrefill:
    """What a compressor sees of one layer right after its prefill.

    ``hidden`` (B, T_q, d) is the layer's normed input of the prefill, whose rows are the last ``T_q`` of the
    ``T_k`` cached positions; ``keys``/``values`` (B, H_kv, T_k, D) the layer's cache (keys rotated);
    ``position_embeddings`` the (cos, sin) of the prefill rows; ``call`` the compression it belongs to."""

    module: nn.Module
    hidden: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    call: KVCall

    @property
    def layer(self) -> int:
        return int(self.module.layer_idx)

    @property
    def key_offset(self) -> int:
        """Cached positions before the prefill rows (0 for a fresh cache)."""
        return self.keys.shape[-2] - self.hidden.shape[1]

    @property
    def n_kv(self) -> int:
        return head_counts(self.module)[1]

    def attention(self, rows: torch.Tensor | slice) -> torch.Tensor:
        """Attention (B, H, R, T_k) of ``rows`` of ``hidden`` to the cached keys (through ``ragcore.attention``)."""
        return rows_attention(
            self.module, self.hidden, self.position_embeddings, rows, keys=self.keys, key_offset=self.key_offset
        )

    def attention_sum(self, weights: torch.Tensor | None = None, chunk: int = 256) -> torch.Tensor:
        """Sum over all rows of ``hidden`` (optionally weighted per row, (R,)) of their attention, (B, H, T_k),
        computed ``chunk`` rows at a time so memory stays O(chunk x T)."""
        t_q = self.hidden.shape[1]
        total = None
        for s in range(0, t_q, chunk):
            rows = slice(s, min(s + chunk, t_q))
            a = self.attention(rows)
            if weights is not None:
                a = a * weights[rows].to(a.dtype)[None, None, :, None]
            part = a.sum(2)
            total = part if total is None else total + part
        return total


class KVCall:
    """One compression: the model and cache it acts on, the prompt (its named spans), and what it produced.

    Yielded by :meth:`KVCompressor.apply`. ``report`` fills as layers are compressed; :meth:`head_masks` gives
    the per-head visibility after an uneven compression. With ``cache=None`` the call binds to the first cache it
    sees, and a later new cache starts it over (a bare ``apply(model)`` around several generations)."""

    def __init__(self, compressor: KVCompressor, model: nn.Module, cache: Any = None, prompt: Prompt | None = None):
        self.compressor, self.model, self.prompt = compressor, model, prompt
        self.cache, self.bound = cache, cache is not None
        self.n_layers = len(decoder_layers(model))
        self.inputs: dict[str, Any] = {}  # what methods that re-read the prompt record of the model's input
        self._start(cache)

    def _start(self, cache: Any) -> None:
        self.cache = cache
        self.report = KVReport(self.compressor.label)
        self.done: set[int] = set()
        self.masks: dict[int, torch.Tensor] = {}
        self.pending: list[tuple[int, Any]] = []  # cross-layer selections: layers waiting for the last one
        self._floors: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def head_masks(self) -> dict[int, torch.Tensor]:
        """Per layer, the (B, H_kv, T_c) visibility of the cache slots after an uneven per-head compression;
        empty when every head keeps all its slots."""
        return dict(self.masks)

    def protected_floor(self, t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``protected(t)`` and its ``priority_floor``, built once per length and device."""
        key = (t, device)
        if key not in self._floors:
            prot = self.compressor.protected(t, device)
            self._floors[key] = (prot, priority_floor(prot))
        return self._floors[key]

    def gather(self, layer: int, entry: Any) -> list[tuple[int, Any]] | None:
        """Hold ``(layer, entry)``; after the last layer, all held pairs in layer order (and forget them)."""
        self.pending.append((layer, entry))
        if len(self.pending) < self.n_layers:
            return None
        out, self.pending = self.pending, []
        return out

    # ---- hooks ------------------------------------------------------------------------------------------------
    def post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        cache = kvcache.from_call(kwargs)
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        pe = kwargs.get("position_embeddings")
        if cache is None or hidden is None or pe is None:
            return
        if cache is not self.cache:
            if self.bound:
                return  # another generation's cache (a concurrent call on the same model)
            self._start(cache)
        layer = module.layer_idx
        if hidden.shape[1] <= 1 or layer in self.done:  # decoding, or already compressed
            return
        self.done.add(layer)
        keys, values = kvcache.get_kv(cache, layer)
        self.compressor.compress_layer(LayerPrefill(module, hidden, keys, values, pe, self))

    def visible(self, module: nn.Module, cache: Any) -> torch.Tensor | None:
        """The per-head visibility of ``module``'s slots for ``cache``, if this call masks that layer."""
        if cache is not self.cache:
            return None
        return self.masks.get(module.layer_idx)


@dataclass
class KVCompressor(Stage):
    """Base of KV-cache compressors. ``score(x)`` gives (B, H_kv, T): higher = keep.

    Parameters
    ----------
    ratio:
        Fraction of the prefilled tokens removed per head, in [0, 1).
    budget:
        Tokens kept per head; overrides ``ratio``.
    n_sink:
        The first tokens, always kept (attention sinks).
    protect_last:
        The last tokens, always kept.
    """

    ratio: float = option(0.0, low=0, high=1, high_open=True, what="(the fraction removed)")
    budget: int | None = option(None, kind=int, minimum=1)
    n_sink: int = option(0, minimum=0)
    protect_last: int = option(0, minimum=0)

    name: ClassVar[str] = "base"
    label_skip: ClassVar[tuple[str, ...]] = ("ratio", "budget")  # reported apart from the method's options
    attention_based: ClassVar[bool] = False  # scores are attention-like masses (>= 0), usable by caote

    # ---- what subclasses define --------------------------------------------------------------------------
    def score(self, x: LayerPrefill) -> torch.Tensor:
        """Scores (B, H_kv, T_k) of the layer's cached positions."""
        raise NotImplementedError

    def protected(self, t: int, device: torch.device) -> torch.Tensor:
        """Positions (T,) bool that are always kept (sinks, last tokens); subclasses may add to it."""
        keep = torch.zeros(t, dtype=torch.bool, device=device)
        keep[: self.n_sink] = True
        if self.protect_last:
            keep[max(t - self.protect_last, 0) :] = True
        return keep

    def head_budgets(
        self, scores: torch.Tensor, protected: torch.Tensor, k: int, x: LayerPrefill
    ) -> torch.Tensor | None:
        """Tokens kept per head (B, H_kv), or None for ``k`` everywhere. Head-adaptive methods override."""
        return None

    def budget_rule(self, t: int, n_layers: int, n_kv: int) -> KVBudget:
        """What this method keeps of a ``t``-token prompt in a model of ``n_layers`` x ``n_kv`` heads (checked by
        the conformance suite). Default: ``layer_keep`` tokens in every head of each layer."""
        k = self.n_keep(t)
        per_layer = [k if k >= t else self.layer_keep(k, t, li, n_layers, n_kv) for li in range(n_layers)]
        return KVBudget(min(per_layer), n_kv * sum(per_layer))

    # ---- selection -----------------------------------------------------------------------------------------
    def n_keep(self, t: int) -> int:
        """Tokens kept per head out of ``t`` (at least 1)."""
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

    def layer_keep(self, k: int, t: int, layer: int, n_layers: int, n_kv: int) -> int:
        """Tokens per head that ``layer`` (of ``n_layers`` with ``n_kv`` key/value heads each) keeps, given the mean
        budget ``k`` of ``t``; budgets across layers (``pyramid``) override this, and ``layer_lengths_vary`` with it."""
        return k

    def layer_lengths_vary(self) -> bool:
        """True where ``layer_keep`` gives layers different lengths. transformers builds one attention mask from the
        first layer's length for tokens fed together after the prefill, so every layer then records an all-visible
        mask and the pre-hook passes each layer a mask of its own length (nothing is hidden: not ``masks_only``)."""
        return False

    # ---- the per-layer step --------------------------------------------------------------------------------
    @torch.no_grad()
    def compress_layer(self, x: LayerPrefill) -> None:
        t = x.keys.shape[-2]
        report = x.call.report
        before = x.keys.numel() * x.keys.element_size() + x.values.numel() * x.values.element_size()
        k = self.n_keep(t)
        k = k if k >= t else self.layer_keep(k, t, x.layer, x.call.n_layers, x.n_kv)
        report.tokens_before[x.layer] = t
        report.kv_bytes_before += before
        if k >= t:  # nothing to remove: leave the cache untouched
            report.tokens_kept[x.layer] = [t] * x.keys.shape[1]
            report.cache_len[x.layer] = t
            report.kv_bytes_after += before
            return
        self.keep(x, k)

    def keep(self, x: LayerPrefill, k: int) -> None:
        """Choose the ``k`` positions per head that the layer keeps and prune it (``prune_layer``); a selection
        across layers (``layers:``) overrides this."""
        scores = self.checked_score(x)
        prot, floor = x.call.protected_floor(x.keys.shape[-2], scores.device)
        budgets = self.head_budgets(scores, prot, k, x)
        idx, mask = self.select(torch.maximum(scores, floor), k, budgets)
        if budgets is not None and mask is None:  # head-wise budgets, even here: every layer of them gets a mask
            mask = torch.ones_like(idx, dtype=torch.bool)
        self.prune_layer(x.call, x.layer, idx, mask)

    def checked_score(self, x: LayerPrefill) -> torch.Tensor:
        """``score(x)`` as float32, its shape checked against the cache's (B, H_kv, T)."""
        b, h_kv, t = x.keys.shape[:3]
        scores = self.score(x).float()
        if tuple(scores.shape) != (b, h_kv, t):
            raise RuntimeError(f"{self.name}.score returned {tuple(scores.shape)}, expected {(b, h_kv, t)}")
        return scores

    def prune_layer(self, call: KVCall, layer: int, idx: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Keep positions ``idx`` (B, H_kv, k) of ``layer`` and record it in the call's report; ``mask``
        (B, H_kv, k) is the per-head visibility of the kept slots (head-wise budgets), ``None`` for all visible."""
        kvcache.prune(call.cache, layer, idx)
        h_kv = idx.shape[1]
        if mask is None and self.layer_lengths_vary():
            mask = torch.ones_like(idx, dtype=torch.bool)
        report = call.report
        if mask is not None:
            call.masks[layer] = mask
            report.masks_only = report.masks_only or not bool(mask.all())
            kept = mask.sum(-1)[0].tolist()
        else:
            kept = [idx.shape[-1]] * h_kv
        report.tokens_kept[layer] = [int(n) for n in kept]
        report.cache_len[layer] = idx.shape[-1]
        k2, v2 = kvcache.get_kv(call.cache, layer)
        report.kv_bytes_after += k2.numel() * k2.element_size() + v2.numel() * v2.element_size()

    # ---- use -----------------------------------------------------------------------------------------------
    @contextmanager
    def apply(self, model: nn.Module, cache: Any = None, prompt: Prompt | None = None) -> Iterator[KVCall]:
        """Compress ``cache`` (default: the first cache the model is called with) right after each layer's prefill
        inside this block; yields the :class:`KVCall` (its ``report`` fills as layers are compressed). ``prompt``
        (its named token spans) serves methods that select whole parts of it. Hooks are removed when the block
        ends, also on errors."""
        with _PREPARE:
            self.prepare(model)
        call = KVCall(self, model, cache, prompt)
        with kvcache.attention_hooks(model, pre=kvcache.head_mask_hook(call.visible), post=call.post_hook):
            yield call

    def prepare(self, model: nn.Module) -> None:
        """Called on entering ``apply``, once at a time (e.g. a calibration); default: nothing."""


@dataclass
class WrapperCompressor(KVCompressor):
    """A compressor around an ``inner`` one (a spec string or an instance): it keeps what the inner one protects,
    prepares it, and by default scores with it. Subclasses check the inner kind in ``check_inner``.

    The inner compressor's own ``ratio`` is not used: the wrapper's decides."""

    inner: KVCompressor | str = "snapkv"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.inner, str):
            self.inner = build("kv_compressor", self.inner)
        self.check_inner()

    def check_inner(self) -> None:
        if not isinstance(self.inner, KVCompressor):
            raise ConfigError(f"{self.name} needs an inner KV compressor, got {self.inner!r}")

    def protected(self, t: int, device: torch.device) -> torch.Tensor:
        return super().protected(t, device) | self.inner.protected(t, device)

    def prepare(self, model: nn.Module) -> None:
        self.inner.prepare(model)

    def score(self, x: LayerPrefill) -> torch.Tensor:
        return self.inner.score(x)
