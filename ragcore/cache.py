"""The one adapter over transformers' KV cache API.

transformers 5.x ``DynamicCache`` holds one layer object per decoder layer with ``.keys``/``.values`` tensors
(B, H_kv, T, D); 4.x held two lists ``key_cache``/``value_cache``. transformers 5.24 renamed the keyword that
carries the cache from ``past_key_values`` to ``cache`` (models and attention layers alike; the old name is
deprecated until 5.40). Everything else in ragcore reads and writes caches, and passes them to a model,
through the small functions here, so a change of that API is fixed in one place.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import torch

from ragcore.attention import RowSoftmax, attention_with_lse
from ragcore.errors import ConfigError

logger = logging.getLogger(__name__)


def new_cache(config: Any, layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> Any:
    """A fresh ``DynamicCache`` for a model of ``config``, optionally filled with (keys, values) per layer."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    for i, (k, v) in enumerate(layers or []):
        cache.update(k, v, i)
    return cache


def slot_cache(config: Any, layers: list[tuple[torch.Tensor, torch.Tensor, int]]) -> Any:
    """A cache whose layers keep their keys and values in given buffers, written in place: per layer ``(keys,
    values, filled)``, the (B, H_kv, C, D) buffers and the slots already written. Each update writes its tokens at
    the layer's fill count (a device tensor, so a CUDA graph that captured the update replays it at the next slot)
    and attention reads the whole buffer, so the caller's mask must hide the slots not written yet (and any
    padding). transformers' ``DynamicCache`` appends by concatenation instead, a copy of the whole layer per
    decoding step; ``StaticCache`` keeps one length for every layer and changed its update between versions.
    :func:`seq_len` (and transformers' ``get_seq_length``) of such a cache is its capacity, not the slots written,
    so :func:`feed` and the per-head mask hook, which take positions from it, are not for it: its user passes
    positions and masks itself (``ragcore.generator``'s batch cache does)."""
    cache = new_cache(config)
    if not hasattr(cache, "layers") or len(cache.layers) != len(layers):
        raise ConfigError(f"slot_cache: expected a layered transformers cache of {len(layers)} layers")
    for i, (k, v, filled) in enumerate(layers):
        if k.shape != v.shape[:-1] + (k.shape[-1],) or not 0 <= filled <= k.shape[-2]:
            raise ConfigError(f"slot_cache: layer {i}: keys {tuple(k.shape)}, values {tuple(v.shape)}, {filled=}")
        cache.layers[i] = _slot_layer()(k, v, filled)
    return cache


@functools.cache
def _slot_layer() -> type:
    """The layer class of :func:`slot_cache` (transformers is imported on first use)."""
    from transformers.cache_utils import DynamicLayer

    class SlotLayer(DynamicLayer):
        def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: int) -> None:
            super().__init__()
            self.keys, self.values, self.is_initialized = keys, values, True
            self.device, self.dtype = keys.device, keys.dtype
            self.filled = torch.tensor([filled], device=keys.device)  # (1,): the next slot to write

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            q = key_states.shape[-2]
            idx = self.filled if q == 1 else self.filled + torch.arange(q, device=self.device)
            self.keys.index_copy_(2, idx, key_states)
            self.values.index_copy_(2, idx, value_states)
            self.filled.add_(q)
            return self.keys, self.values

        def get_mask_sizes(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
            return self.keys.shape[-2], 0

    return SlotLayer


def slots_filled(cache: Any, layer: int) -> torch.Tensor:
    """The (1,) device tensor of the slots a :func:`slot_cache` layer has written (the next one to write)."""
    return cache.layers[layer].filled


@functools.cache
def _cache_keyword(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def call(model: Any, cache: Any, **kwargs: Any) -> Any:
    """``model(**kwargs)`` with ``cache`` passed under the keyword this transformers version's ``model`` takes."""
    return model(**kwargs, **{_cache_keyword(type(model)): cache})


def from_call(kwargs: dict[str, Any]) -> Any:
    """The cache an attention layer was called with (``kwargs`` of a forward hook), or None."""
    cache = kwargs.get("cache")
    return cache if cache is not None else kwargs.get("past_key_values")


def n_layers(cache: Any) -> int:
    """Number of layers the cache has storage for."""
    if hasattr(cache, "layers"):
        return len(cache.layers)
    if hasattr(cache, "key_cache"):
        return len(cache.key_cache)
    raise ConfigError(f"unsupported KV cache type {type(cache).__name__!r}: expected a transformers DynamicCache")


def _check(cache: Any, layer: int) -> None:
    if not 0 <= layer < n_layers(cache):
        raise ConfigError(f"layer {layer!r} is outside the cache's {n_layers(cache)} layers")


def get_kv(cache: Any, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, values) of ``layer``, each (B, H_kv, T, D); rotated keys as the model stored them."""
    _check(cache, layer)
    if hasattr(cache, "layers"):
        lay = cache.layers[layer]
        return lay.keys, lay.values
    return cache.key_cache[layer], cache.value_cache[layer]


def set_kv(cache: Any, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Replace the keys and values of ``layer`` (the old tensors are released)."""
    _check(cache, layer)
    if keys.shape[:-1] != values.shape[:-1]:
        raise ConfigError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} disagree")
    if hasattr(cache, "layers"):
        lay = cache.layers[layer]
        lay.keys, lay.values = keys, values
    else:
        cache.key_cache[layer], cache.value_cache[layer] = keys, values


def _initialised(cache: Any, layer: int) -> bool:
    k, _ = get_kv(cache, layer)
    return isinstance(k, torch.Tensor) and k.dim() == 4


def seq_len(cache: Any, layer: int = 0) -> int:
    """Tokens held by ``layer`` (0 when the layer is still empty)."""
    return int(get_kv(cache, layer)[0].shape[-2]) if _initialised(cache, layer) else 0


def kv_bytes(cache: Any) -> int:
    """Bytes actually held by the key and value tensors of every layer (views count at their own size)."""
    total = 0
    for i in range(n_layers(cache)):
        if _initialised(cache, i):
            k, v = get_kv(cache, i)
            total += k.numel() * k.element_size() + v.numel() * v.element_size()
    return total


def bytes_per_token(cache: Any) -> int:
    """Bytes one more token costs across all layers (batch included), from the cache's tensor shapes."""
    return layers_bytes_per_token([get_kv(cache, i) for i in range(n_layers(cache)) if _initialised(cache, i)])


def layers_bytes_per_token(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """:func:`bytes_per_token` of per-layer (keys, values), each (B, H_kv, T, D), held outside a cache."""
    return sum(
        k.shape[0] * k.shape[1] * (k.shape[-1] * k.element_size() + v.shape[-1] * v.element_size()) for k, v in layers
    )


def prune(cache: Any, layer: int, indices: torch.Tensor) -> None:
    """Keep only the positions ``indices`` (B, H_kv, k) of ``layer``, per head, in the given order.

    The kept entries are gathered into new contiguous tensors, so the memory of the dropped ones is freed.
    """
    keys, values = get_kv(cache, layer)
    if indices.dim() != 3 or tuple(indices.shape[:2]) != tuple(keys.shape[:2]):
        raise ConfigError(
            f"indices must be (B, H_kv, k) = ({keys.shape[0]}, {keys.shape[1]}, k), got {tuple(indices.shape)}"
        )
    # the range check reads two values back; on a GPU that is a host-device synchronisation per layer, which
    # costs more than the pruning, so it runs on CPU tensors only (compressors' indices come from topk)
    if (
        indices.device.type == "cpu"
        and indices.numel()
        and (int(indices.min()) < 0 or int(indices.max()) >= keys.shape[-2])
    ):
        raise ConfigError(f"indices outside the layer's {keys.shape[-2]} positions")
    idx = indices.to(keys.device, torch.long).unsqueeze(-1)
    k = torch.gather(keys, 2, idx.expand(-1, -1, -1, keys.shape[-1])).contiguous()
    v = torch.gather(values, 2, idx.expand(-1, -1, -1, values.shape[-1])).contiguous()
    set_kv(cache, layer, k, v)


def feed(model: Any, ids: torch.Tensor, cache: Any, first_pos: int) -> torch.Tensor:
    """Feed ``ids`` (B, q) on a possibly compressed cache and return the last position's logits (B, V).

    Rotary positions are absolute (``first_pos`` on); cache slots follow the cache's own length, which is shorter
    than the absolute position after pruning."""
    q = ids.shape[1]
    slot = seq_len(cache, 0)
    pos = torch.arange(first_pos, first_pos + q, device=ids.device)[None]
    return call(
        model,
        cache,
        input_ids=ids,
        position_ids=pos,
        cache_position=torch.arange(slot, slot + q, device=ids.device),
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]


def attention_layers(model: Any) -> list[Any]:
    """Every decoder layer's ``self_attn`` module (Llama-style models: ``model.model.layers[i].self_attn``)."""
    from ragcore.attention import decoder_layers

    return [layer.self_attn for layer in decoder_layers(model)]


def _with_kwargs(hook: Callable[..., Any], extra: int) -> Callable[..., Any]:
    """``hook`` called only with the keyword arguments it was registered for. torch writes a hook and its "with
    kwargs" flag one after the other, so a forward running in another thread at that instant can call the hook
    without them; such a call (never the hook's own generation's) is passed over."""

    def call(module: Any, args: tuple, *rest: Any) -> Any:
        return hook(module, args, *rest) if len(rest) == extra else None

    return call


# torch numbers hook handles from a class counter that is not thread-safe, and keys the "with kwargs" flag by that
# number: two threads registering at once can share a number, and removing one then strips the other's flag.
# Registration and removal are therefore serialised (the hooks themselves run concurrently).
HOOKS_LOCK = threading.Lock()


@contextlib.contextmanager
def attention_hooks(
    model: Any, pre: Callable[..., Any] | None = None, post: Callable[..., Any] | None = None
) -> Iterator[None]:
    """Register ``pre(module, args, kwargs)`` and ``post(module, args, kwargs, output)`` on every layer's attention
    module (with keyword arguments) for the block; they are removed when it ends, also on errors. A pre-hook may
    return ``(args, kwargs)`` to replace the call's arguments (the per-head masks below do), so with one the block
    runs under :func:`masked_sdpa`."""
    handles = []
    try:
        with HOOKS_LOCK:
            for attn in attention_layers(model):
                if pre is not None:
                    handles.append(attn.register_forward_pre_hook(_with_kwargs(pre, 1), with_kwargs=True))
                if post is not None:
                    handles.append(attn.register_forward_hook(_with_kwargs(post, 2), with_kwargs=True))
        with masked_sdpa() if pre is not None else contextlib.nullcontext():
            yield
    finally:
        with HOOKS_LOCK:
            for h in handles:
                h.remove()


@contextlib.contextmanager
def masked_sdpa() -> Iterator[None]:
    """For the block, scaled-dot-product attention on CUDA without the cuDNN backend (flash, memory-efficient or
    math). cuDNN's attention builds an execution plan per shape and mask: decoding on a compressed cache under
    per-head masks (a new shape every step) spent 1-2 s a step on an H200 against about 0.02 s with the
    memory-efficient kernel (docs/gpu-runs.md, the third lease of 2026-11-30). Without CUDA, or with cuDNN's
    attention already off, nothing changes. The backend switches are process-wide, as torch keeps them."""
    if not torch.cuda.is_available() or not torch.backends.cuda.cudnn_sdp_enabled():
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        yield


def cudnn_sdpa_off() -> None:
    """Turn cuDNN's scaled-dot-product attention off for the process (torch then picks flash or memory-efficient
    attention), as :func:`ragcore.models.load_generator` does for a model it loads onto a CUDA device. cuDNN's
    attention builds an execution plan for every new shape, and nearly every call ragcore makes has one (each
    prompt's length, each decoding step's key length, each InfiniRetri window): measured by ``python -m
    bench.sdpa_backends`` (docs/RESULTS.md, section ``sdpa-backends-gpu``). It reverses 1b117a9, which had kept
    cuDNN on outside per-head masks because a PoisonedRAG run with it off traced 1.5x slower: that run's 20
    processes shared one GPU with other work, while the tracers alone on an H200 were faster with it off, AttnTrace
    and ContextCite both (docs/RESULTS.md, section ``attribution``, its speed runs).

    A no-op without CUDA. To keep cuDNN's attention, turn it back on with
    ``torch.backends.cuda.enable_cudnn_sdp(True)`` after the generator has loaded (``Generator.warm_up()``): every
    load turns it off again. The switch is torch's, process-wide; :func:`masked_sdpa` blocks entered while cuDNN
    was on restore it on exit."""
    if torch.cuda.is_available() and torch.backends.cuda.cudnn_sdp_enabled():
        torch.backends.cuda.enable_cudnn_sdp(False)
        logger.info("cuDNN's scaled-dot-product attention turned off (a plan per new shape)")


def visibility_mask(visible: torch.Tensor, past: int, q: int, module: Any, dtype: torch.dtype) -> torch.Tensor:
    """The 4D attention mask that hides cache slots per key/value head, for ``q`` new rows after ``past`` slots.

    ``visible`` (B, H_kv, S) says which of the first ``S`` slots each key/value head may see (slots beyond ``S`` are
    visible); the new rows are causal among themselves. Returns (B, H, q, past + q): boolean for SDPA and flash
    attention, additive (0 / dtype min) for eager attention, with query heads sharing their group's visibility."""
    n_h = module.config.num_attention_heads
    n_kv = visible.shape[1]
    width = past + q
    vis = torch.ones(visible.shape[0], n_kv, width, dtype=torch.bool, device=visible.device)
    s = min(visible.shape[-1], width)
    vis[..., :s] = visible[..., :s]
    causal = torch.arange(width, device=vis.device)[None, :] <= (past + torch.arange(q, device=vis.device))[:, None]
    full = (vis[:, :, None, :] & causal[None, None]).repeat_interleave(n_h // n_kv, dim=1)
    if getattr(module.config, "_attn_implementation", "sdpa") == "eager":
        full = torch.zeros(full.shape, dtype=dtype, device=vis.device).masked_fill(~full, torch.finfo(dtype).min)
    return full


def head_mask_hook(masks: Callable[[Any, Any], torch.Tensor | None]) -> Callable[..., Any]:
    """A pre-hook (for :func:`attention_hooks`) passing per-head visibility: ``masks(module, cache)`` gives the
    (B, H_kv, S) visibility of the layer's slots for the cache being used, or None to leave the call alone.

    A decoding step (one new row) gets a view of a mask row built once per layer and visibility tensor, with room
    for the slots that later steps append (rebuilt, larger, when they outgrow it): the same values as
    :func:`visibility_mask`, without the dozen or so tensor operations per layer and step that building it costs
    (on a GPU each is a kernel launch, which is what a small model's decoding step is bound by). Several new rows
    (a question fed on the cache) get a mask built for the call."""
    rows: dict[int, tuple[torch.Tensor, torch.dtype, torch.Tensor]] = {}  # layer -> (visible, dtype, mask row)

    def pre(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        cache = from_call(kwargs)
        visible = masks(module, cache) if cache is not None else None
        if visible is None:
            return None
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        past, q, dtype = seq_len(cache, module.layer_idx), hidden.shape[1], hidden.dtype
        if q != 1:
            mask = visibility_mask(visible, past, q, module, dtype)
        else:
            entry = rows.get(module.layer_idx)
            if entry is None or entry[0] is not visible or entry[1] != dtype or entry[2].shape[-1] <= past:
                room = past + 1 + max(DECODE_ROOM, past // 4)  # a row for past + 1 slots, and room to grow
                entry = (visible, dtype, visibility_mask(visible, room - 1, 1, module, dtype))
                rows[module.layer_idx] = entry
            mask = entry[2][..., : past + 1]
        return args, {**kwargs, "attention_mask": mask}

    return pre


DECODE_ROOM = 256  # decoding steps a per-layer mask row is built for, at least, before it is rebuilt larger


ATTN_IMPLEMENTATION = "ragcore_sdpa"  # the attention implementation ragcore's loaders give a model on "sdpa"
# the device types grouped decoding runs on, each with the multiple of slots it pads a step's keys and values to:
# on CUDA, cuBLAS picks kernels 5-20x slower for products over, or into, a slot count that is not a multiple of 8.
# Elsewhere SDPA runs: on CPU a step is bound by the model's matrix products, and the grouped path was no faster
# in a trial of bench.decode_step with "cpu" added here, while it dispatches more operations
GROUPED_DECODE = {"cuda": 8}


_ROW_SOFTMAX: ContextVar[dict[int, Any] | None] = ContextVar("ragcore_row_softmax", default=None)


@contextlib.contextmanager
def record_row_softmax(into: dict[int, Any]) -> Iterator[dict[int, Any]]:
    """For the block, in this thread (or task), every attention layer of a model on :data:`ATTN_IMPLEMENTATION`
    that reads several rows fed after cached keys under the plain causal mask puts
    ``into[layer_idx] = RowSoftmax(queries, lse)`` (:class:`ragcore.attention.RowSoftmax`: its scaled, rotated
    queries and each row's softmax normaliser, from the same flash pass that gives the layer's output,
    :func:`ragcore.attention.attention_with_lse`). KVzip's reconstruction reads them, so its scores cost one
    product per layer and no second attention pass. Layers on other implementations (eager, flash attention)
    record nothing: readers fall back to computing the normalisers themselves. Yields ``into``."""
    token = _ROW_SOFTMAX.set(into)
    try:
        yield into
    finally:
        _ROW_SOFTMAX.reset(token)


def grouped_decode_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except a decoding step (one query row) under a mask on a device of
    :data:`GROUPED_DECODE` (CUDA): that one runs as two matrix products per key/value head, with the query heads of
    each group as rows.

    Why: with a mask, transformers' SDPA path either repeats every key and value per query head (``repeat_kv``,
    seven copies of the whole cache per layer and step for Qwen2.5's 14 heads in 2 groups) or, packing the group's
    heads as query rows, hands the memory-efficient kernel one thread block per (row, key/value head), which then
    reads all the cache's slots alone. A compressed cache under per-head masks, and any left-padded batch, decodes
    on that path every step. Here the scores are a batched product (query heads of a group) x (their keys), in
    float32 on CUDA (``out_dtype``), masked, a float32 softmax, then the product with the values in the model's
    dtype, as flash attention does. On CUDA a slot count that is not a multiple of 8 is padded with hidden slots
    (a copy of the keys and values, cheaper than cuBLAS's kernels for such shapes). Measured by ``python -m
    bench.decode_step`` (docs/RESULTS.md, section ``decode-step-gpu``).

    Shapes as transformers' attention functions: ``query`` (B, H, 1, D), ``key``/``value`` (B, H_kv, T, D),
    ``attention_mask`` (B or 1, H or 1, 1, T), boolean (True: visible) or additive; returns ((B, 1, H, D), None).
    Several rows fed after cached keys with nothing but the causal mask (a chunk of a long prefill, KVzip's
    reconstruction) run, on those devices, as SDPA under torch's ``causal_lower_right``: transformers hands SDPA
    the mask written out, which only the memory-efficient kernel takes (0.8 s of KVzip's reconstruction at 25k
    tokens on an H200 before this path, docs/RESULTS.md ``compress-cost-gpu``), while the lower-right causal
    bias runs on flash attention. Such rows inside :func:`record_row_softmax` run, on every device, as
    :func:`ragcore.attention.attention_with_lse` and leave their queries and normalisers behind. Everything else (prefill from an empty cache, no mask, other masks, dropout,
    training) goes to transformers' ``sdpa_attention_forward`` unchanged. Registered as
    :data:`ATTN_IMPLEMENTATION` by :func:`use_grouped_decode`."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, h, q, d = query.shape
    hkv, t = key.shape[1], key.shape[2]
    record = _ROW_SOFTMAX.get()
    first = getattr(module, "layer_idx", 0) == 0
    if (
        record is not None
        and attention_mask is not None
        and 1 < q < t
        and not (dropout or module.training or h % hkv)
        and lower_right_causal(attention_mask, q, t, first)
    ):
        scale = d**-0.5 if scaling is None else scaling
        out, lse = attention_with_lse(query, key, value, scale)
        record[module.layer_idx] = RowSoftmax(query * scale, lse)
        return out.transpose(1, 2).contiguous(), None
    align = GROUPED_DECODE.get(query.device.type)
    plain = attention_mask is None or align is None or dropout or module.training or h % hkv
    if not plain and 1 < q < t and lower_right_causal(attention_mask, q, t, first):
        from torch.nn.attention.bias import causal_lower_right

        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=causal_lower_right(q, t), scale=scaling, enable_gqa=h != hkv
        )
        return out.transpose(1, 2).contiguous(), None
    if q != 1 or plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    g = h // hkv
    scale = d**-0.5 if scaling is None else scaling
    mask = attention_mask if attention_mask.shape[-1] == t else attention_mask[..., -t:]  # (B|1, H|1, 1, T)
    pad = -t % align
    if pad:
        key, value = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (key, value))
        hide = False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min
        mask = torch.nn.functional.pad(mask, (0, pad), value=hide)
        t += pad
    qg = (query * scale).reshape(b * hkv, g, d)  # query head i*g + j reads key/value head i (transformers' repeat_kv)
    kt = key.reshape(b * hkv, t, d).transpose(1, 2)
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16):
        scores = torch.bmm(qg, kt, out_dtype=torch.float32)
    else:
        scores = torch.bmm(qg, kt).float()
    scores = scores.view(b, hkv, g, t)
    if mask.shape[1] == h:
        mask = mask.reshape(mask.shape[0], hkv, g, t)
    scores = torch.where(mask, scores, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1).to(value.dtype).view(b * hkv, g, t)
    out = torch.bmm(probs, value.reshape(b * hkv, t, d))  # (B * H_kv, g, D): rows are query heads in order
    return out.view(b, 1, h, d), None


_LAST_CHECK = threading.local()  # per thread: the last mask lower_right_causal read, and its answer


def lower_right_causal(mask: torch.Tensor, q: int, t: int, fresh: bool = True) -> bool:
    """Whether an attention mask (B|1, 1, q, >= t), boolean, shows ``q`` rows fed after ``t - q`` cached keys
    every key up to their own and no other (the causal mask aligned to the lower right), the same for every
    sequence of the batch. It reads the whole mask (one pass, and a wait for the device), except with
    ``fresh=False`` for the tensor it read last on this thread: transformers hands every layer of a forward the
    same mask tensor, so :func:`grouped_decode_attention` reads it at the first layer (``fresh``) and the other
    layers take that answer."""
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2] != q or mask.shape[-1] < t:
        return False
    last = getattr(_LAST_CHECK, "entry", None)
    if not fresh and last is not None and last[0]() is mask and last[1] == t:
        return last[2]
    own = torch.ones(q, q, dtype=torch.bool, device=mask.device).tril()
    found = bool(mask[..., : t - q].all() and torch.equal(mask[..., t - q : t], own.expand_as(mask[..., t - q : t])))
    _LAST_CHECK.entry = (weakref.ref(mask), t, found)
    return found


@functools.cache
def _register_grouped_decode() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, grouped_decode_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)  # the masks SDPA gets


def use_grouped_decode(model: Any) -> None:
    """Give a model on transformers' ``"sdpa"`` attention :func:`grouped_decode_attention` (registered with
    transformers' ``AttentionInterface`` as :data:`ATTN_IMPLEMENTATION`, with SDPA's masks), as
    :func:`ragcore.models.load_generator` and ``Generator.from_model`` do. It is SDPA except for masked decoding
    steps, so nothing else changes; a model on another implementation (eager, flash attention) is left alone."""
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        _register_grouped_decode()
        model.config._attn_implementation = ATTN_IMPLEMENTATION
