"""The one attention module: how much chosen query rows attend to each token and named span of a prompt.

Attention probabilities are recomputed from the hidden states for the chosen rows only (query and key
projections, rotary embedding, grouped-query heads, causal mask), so the model can run with SDPA or flash
attention and memory stays linear in the context length: O(rows x tokens) per head instead of
O(tokens^2). Eager attention (``output_attentions=True``) is the reference the tests compare against.

Rerankers, context compressors, KV-cache compressors and AttnTrace all call this module:

* ``rows_attention(attn, hidden, position_embeddings, rows)``: inside one layer (used by KV compressors from
  their hooks, where the layer's normed input is at hand);
* ``attention_to_spans(model, input_ids, spans, rows)``: a whole forward pass, every (chosen) layer, with
  the attention mass per named span;
* ``layer_input(model, input_ids, layer)``: the decoder run only up to one layer's input, whose normed input and
  rotary embedding ``rows_attention`` then reads (InfiniRetri reads one layer per window);
* ``attention_with_lse(query, key, value)`` and ``max_attention(...)``: rows fed after cached keys (KVzip's
  reconstruction): their output with each row's softmax normaliser, from the flash kernel, and the largest
  probability any of them pays each cached key, without writing the probabilities out.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ragcore.errors import ConfigError

logger = logging.getLogger(__name__)


def head_counts(attn: nn.Module) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dimension) of an attention layer."""
    cfg = attn.config
    n_h = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_h
    head_dim = getattr(attn, "head_dim", None) or cfg.hidden_size // n_h
    return n_h, n_kv, head_dim


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The rotary embedding's half rotation of the last dimension: (x1, x2) -> (-x2, x1)."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` (B, H, T, D) with ``cos``/``sin`` (B, T, D) as the model's rotary_emb gives."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


def project_queries(
    attn: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
    rows: torch.Tensor | slice = slice(None),
) -> torch.Tensor:
    """Query states (B, H, R, D) of the given rows of ``hidden`` (the layer's normed input), rotated by
    ``position_embeddings`` (the (cos, sin) of every row of ``hidden``), or not rotated when it is None.
    ``rows``: a slice or (R,) indices shared by the batch, or (B, R) indices, one row list per sequence."""
    n_h, _, d = head_counts(attn)
    pick = _rows_picker(rows, hidden.shape[0], hidden.device)
    h = pick(hidden)
    q = attn.q_proj(h).view(h.shape[0], h.shape[1], n_h, d).transpose(1, 2)
    if hasattr(attn, "q_norm"):  # Qwen3-style per-head query norm
        q = attn.q_norm(q)
    if position_embeddings is None:
        return q
    cos, sin = position_embeddings
    return apply_rotary(q, pick(cos.expand(hidden.shape[0], -1, -1)), pick(sin.expand(hidden.shape[0], -1, -1)))


def _rows_picker(rows: torch.Tensor | slice, batch: int, device: torch.device):  # noqa: ANN202
    """x (B, T, ...) -> x at ``rows`` (B, R, ...): a slice or (R,) indices for every sequence, or (B, R)."""
    if isinstance(rows, slice) or rows.dim() == 1:
        return lambda x: x[:, rows]
    b = torch.arange(batch, device=device)[:, None]
    return lambda x: x[b, rows]


def rotary_embedding(
    model: nn.Module, like: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's rotary (cos, sin), each (B, T, D), at ``positions`` (B, T), in ``like``'s dtype and device."""
    rotary = getattr(getattr(model, "model", model), "rotary_emb", None)
    if rotary is None:
        raise ConfigError(f"{type(model).__name__} has no model.rotary_emb; supported: rotary decoder models")
    return rotary(like, positions)


def project_keys(
    attn: nn.Module, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Rotated key states (B, H_kv, T, D) of every row of ``hidden``."""
    _, n_kv, d = head_counts(attn)
    k = attn.k_proj(hidden).view(hidden.shape[0], hidden.shape[1], n_kv, d).transpose(1, 2)
    if hasattr(attn, "k_norm"):
        k = attn.k_norm(k)
    cos, sin = position_embeddings
    return apply_rotary(k, cos, sin)


@functools.lru_cache(maxsize=16)
def _future(start: int, stop: int, n_keys: int, key_offset: int, device: torch.device) -> torch.Tensor:
    """(R, T) True where key ``j`` lies after row ``r`` (rows ``start..stop``): built once, then shared by every
    layer of a prefill (a KV compressor asks for the same rows in each layer)."""
    rows = torch.arange(start, stop, device=device)
    return torch.arange(n_keys, device=device)[None, :] > (rows[:, None] + key_offset)


def rows_attention(
    attn: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    rows: torch.Tensor | Sequence[int] | slice,
    keys: torch.Tensor | None = None,
    key_offset: int = 0,
) -> torch.Tensor:
    """Attention probabilities (B, H, R, T) in float32 that the query ``rows`` pay to every key.

    ``hidden`` is the attention layer's input (after the input layer norm), (B, T, d); ``rows`` index into it
    (a ``slice`` of consecutive rows is the fast path: no gathers, a cached causal mask; (R,) indices shared by
    the batch; or (B, R) indices, one row list per sequence, for right-padded batches of different lengths). ``keys``
    (B, H_kv, T_k, D), rotated, default: computed from ``hidden``. Row ``r`` sees keys at positions
    ``<= r + key_offset`` (``key_offset`` = how many cached keys precede ``hidden``). Scores are computed in the
    model's dtype and normalised in float32, as eager attention does.
    """
    if not isinstance(rows, slice):
        rows = torch.as_tensor(rows, device=hidden.device, dtype=torch.long)
    n_h, n_kv, d = head_counts(attn)
    q = project_queries(attn, hidden, position_embeddings, rows)
    k = project_keys(attn, hidden, position_embeddings) if keys is None else keys
    k = k.to(q.dtype).repeat_interleave(n_h // n_kv, dim=1)  # grouped-query heads share keys
    scale = getattr(attn, "scaling", d**-0.5)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if isinstance(rows, slice):
        start, stop, _ = rows.indices(hidden.shape[1])
        mask = _future(start, stop, k.shape[-2], key_offset, hidden.device)
    else:
        mask = torch.arange(k.shape[-2], device=hidden.device) > (rows[..., None] + key_offset)  # (R, T) or (B, R, T)
        if mask.dim() == 3:
            mask = mask[:, None]
    return torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1, dtype=torch.float32)


@torch.inference_mode()
def rows_attention_batch(
    model: nn.Module, sequences: Sequence[torch.Tensor], rows: Sequence[Sequence[int]]
) -> list[torch.Tensor]:
    """For each sequence (1-D token ids, lengths may differ), the attention its ``rows`` pay to its tokens,
    averaged over layers and heads: a list of (R_i, T_i) float32 CPU tensors, from ONE forward over the batch.

    The sequences are right-padded: causal attention keeps the padding out of every real row, so no attention
    mask or position shift is needed; rows are recomputed per sequence (:func:`rows_attention` with (B, R) rows).
    Every sequence must have the same number of rows. Used by AttnTrace for its subsamples.
    """
    n = len(sequences)
    if n == 0:
        return []
    lens = [int(x.numel()) for x in sequences]
    r = {len(rw) for rw in rows}
    if len(r) != 1 or len(rows) != n:
        raise ConfigError(f"rows_attention_batch needs one list of rows per sequence, all of one length, got {rows!r}")
    dev = model.device
    ids = torch.zeros((n, max(lens)), dtype=torch.long, device=dev)
    for i, x in enumerate(sequences):
        ids[i, : lens[i]] = x.reshape(-1).to(dev)
    row_idx = torch.as_tensor([list(rw) for rw in rows], dtype=torch.long, device=dev)
    if int(row_idx.min()) < 0 or bool((row_idx >= torch.as_tensor(lens, device=dev)[:, None]).any()):
        raise ConfigError(f"rows {rows!r} lie outside their sequences of lengths {lens}")
    out = model(input_ids=ids, output_hidden_states=True, use_cache=False, logits_to_keep=1)
    pos = torch.arange(ids.shape[1], device=dev)[None].expand(n, -1)
    total = None
    blocks = decoder_layers(model)
    pe = rotary_embedding(model, out.hidden_states[0], pos)  # every layer's (cos, sin): one position grid
    for li, layer in enumerate(blocks):
        h = layer.input_layernorm(out.hidden_states[li])
        a = rows_attention(layer.self_attn, h, pe, row_idx).mean(1)  # (B, R, T)
        total = a if total is None else total + a
    total = (total / len(blocks)).cpu()
    return [total[i, :, : lens[i]] for i in range(n)]


_FLASH_KERNELS = {
    "cuda": torch.ops.aten._scaled_dot_product_flash_attention,
    "cpu": torch.ops.aten._scaled_dot_product_flash_attention_for_cpu,
}


def keys_before(what: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor | None = None) -> int:
    """How many keys come before the rows of ``query`` (B, H, R, D) that are the last ``R`` of ``key``'s
    (B, H_kv, T_k, D) (rows fed after cached keys), checking that the shapes fit: the same batch and head size,
    ``H`` a multiple of ``H_kv``, ``value`` as long as ``key``, ``R <= T_k``. Raises ``ConfigError`` naming
    ``what`` and the shapes."""
    shapes = f"query {tuple(query.shape)}, key {tuple(key.shape)}" + (
        "" if value is None else f", value {tuple(value.shape)}"
    )
    if query.dim() != 4 or key.dim() != 4 or (value is not None and value.dim() != 4):
        raise ConfigError(f"{what}: (B, H, T, D) tensors expected, got {shapes}")
    (b, n_h, r, d), (bk, n_kv, t_k, dk) = query.shape, key.shape
    if b != bk or d != dk or n_kv < 1 or n_h % n_kv:
        raise ConfigError(
            f"{what}: {shapes} do not fit (same batch and head size, query heads a multiple of key heads)"
        )
    if value is not None and (value.shape[:3] != key.shape[:3]):
        raise ConfigError(f"{what}: {shapes} do not fit (values as many as keys)")
    if r > t_k:
        raise ConfigError(f"{what}: {r} rows are more than the {t_k} keys they are the last of")
    return t_k - r


def _flash_with_lse(
    query: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Torch's flash kernel on rows that are the last ``R`` of the keys (``k``/``v`` already repeated per query
    head): one call for the rows' own keys (causal, a square), one for the keys before them (all visible), joined
    by their normalisers. (output (B, H, R, D) in the query's dtype, lse (B, H, R) float32), or None where the
    kernel does not run (no kernel for the device, dtype or head size)."""
    kernel = _FLASH_KERNELS.get(query.device.type)
    if kernel is None:
        return None
    r, offset = query.shape[2], k.shape[2] - query.shape[2]
    query, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (query, k, v))  # the kernel reads rows whole
    try:
        own = kernel(query, k[:, :, offset:], v[:, :, offset:], dropout_p=0.0, is_causal=True, scale=scale)
        out, lse = own[0], own[1][..., :r].float()
        if offset:
            past = kernel(query, k[:, :, :offset], v[:, :, :offset], dropout_p=0.0, is_causal=False, scale=scale)
            lse_past = past[1][..., :r].float()
            total = torch.logaddexp(lse, lse_past)
            out = out.float() * (lse - total).exp()[..., None] + past[0].float() * (lse_past - total).exp()[..., None]
            out, lse = out.to(query.dtype), total
        return out, lse
    except (RuntimeError, NotImplementedError) as e:  # no flash kernel for this dtype or head size here
        logger.debug("flash attention refused (%s); computed in blocks instead", e)
        return None


@dataclass
class RowSoftmax:
    """Query rows as an attention function read them, and each row's softmax normaliser: ``queries`` (B, H, R, D),
    rotated and already multiplied by the attention's scale; ``lse`` (B, H, R) float32, ``log sum_j exp(q . k_j)``
    over the keys each row sees. Recorded by :func:`ragcore.cache.record_row_softmax` and read by
    :func:`max_attention`, so that a layer's own attention pass gives the normalisers once."""

    queries: torch.Tensor
    lse: torch.Tensor


def attention_with_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of ``R`` query rows that are the last ``R`` of the ``T_k`` keys (rows fed after
    ``T_k - R`` cached keys: row ``r`` sees keys ``<= T_k - R + r``, the lower-right causal mask), with each
    row's softmax normaliser.

    ``query`` (B, H, R, D), rotated, not scaled; ``key``/``value`` (B, H_kv, T_k, D) with ``H`` a multiple of
    ``H_kv`` (query head ``i x g + j`` reads key head ``i``, as transformers' ``repeat_kv``); ``scale`` defaults to
    ``D ** -0.5``. Returns the output (B, H, R, D) in the query's dtype and ``lse`` (B, H, R) float32 of the
    scaled scores. Torch's flash kernel gives both in one pass over the keys (on CPU and, in half precision, on
    CUDA): one call for the rows' own keys (causal, a square), one for the keys before them (all visible),
    joined by their normalisers. Elsewhere, SDPA under torch's ``causal_lower_right`` and :func:`row_logsumexp`'s
    float32 blocks. Raises ``ConfigError`` for more rows than keys."""
    keys_before("attention_with_lse", query, key, value)
    b, n_h, r, d = query.shape
    n_kv, t_k = key.shape[1], key.shape[2]
    if r == 0:
        return query.new_zeros(b, n_h, 0, value.shape[-1]), query.new_zeros(b, n_h, 0, dtype=torch.float32)
    scale = d**-0.5 if scale is None else scale
    g = n_h // n_kv
    k, v = (x.repeat_interleave(g, dim=1) if g > 1 else x for x in (key, value))
    flash = _flash_with_lse(query, k, v, scale)
    if flash is not None:
        return flash
    from torch.nn.attention.bias import causal_lower_right

    out = torch.nn.functional.scaled_dot_product_attention(
        query, k, v, attn_mask=causal_lower_right(r, t_k), scale=scale
    )
    return out, row_logsumexp(query * scale, key, flash=False)


def row_logsumexp(queries: torch.Tensor, keys: torch.Tensor, flash: bool = True) -> torch.Tensor:
    """Each query row's softmax normaliser: ``log sum_j exp(q . k_j)`` (B, H, R) in float32, over the keys it sees.

    ``queries`` (B, H, R, D) are already scaled (and rotated); ``keys`` (B, H_kv, T_k, D) with ``H`` a multiple of
    ``H_kv`` (query head ``i x g + j`` reads key head ``i``, as transformers' ``repeat_kv``), the rows being the
    last ``R <= T_k`` of the ``T_k`` keys: row ``r`` sees keys ``<= T_k - R + r``. Torch's flash attention kernel
    returns this beside its output without writing the scores out: one call for the rows' own keys (causal, a
    square) and one for the keys before them (all visible), joined with ``logaddexp``. Where that kernel does not
    run (float32 on CUDA, other devices) or with ``flash=False``, the scores are computed in float32 in blocks of
    rows instead. Raises ``ConfigError`` for more rows than keys."""
    offset = keys_before("row_logsumexp", queries, keys)
    b, n_h, r, d = queries.shape
    n_kv, t_k = keys.shape[1], keys.shape[2]
    if r == 0:  # torch's CPU kernel divides by the row count
        return queries.new_zeros(b, n_h, 0, dtype=torch.float32)
    k = keys.to(queries.dtype).repeat_interleave(n_h // n_kv, dim=1)
    got = _flash_with_lse(queries, k, k, 1.0) if flash else None
    if got is not None:
        return got[1]
    out = torch.empty(b, n_h, r, dtype=torch.float32, device=queries.device)
    step = max(1, (1 << 22) // max(1, n_h * t_k))
    rows = torch.arange(r, device=queries.device)
    kt = k.float().transpose(-1, -2)
    for s in range(0, r, step):
        e = min(s + step, r)
        scores = torch.matmul(queries[:, :, s:e].float(), kt)  # (B, H, R_b, T_k)
        scores[..., offset + s + 1 :].masked_fill_(rows[None, s + 1 :] > rows[s:e, None], float("-inf"))
        out[:, :, s:e] = torch.logsumexp(scores, -1)
    return out


def bfloat16_products(device: str | torch.device = "cpu") -> bool:
    """Whether matrix products in bfloat16 are fast on ``device`` (a device or its name: ``"cpu"``, ``"cuda:0"``,
    ...): on a CUDA device with native bfloat16 (compute capability 8 and later), and on an x86 CPU with bfloat16
    dot products (avx512_bf16 or AMX), where they take about a third of float32's time. Elsewhere torch emulates
    them, slower than float32. Raises ``ConfigError`` for a string that names no device."""
    try:
        dev = torch.device(device.lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"bfloat16_products: not a device: {device!r}") from e
    return _bfloat16_products(dev.type)


@functools.cache
def _bfloat16_products(device_type: str) -> bool:
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's feature queries (x86)
    try:
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
    except RuntimeError:  # a torch build without the queries
        return False


_PRODUCT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def max_attention(
    attn: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    keys: torch.Tensor,
    n_keys: int,
    cells: int | None = None,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
    fused: bool | None = None,
    softmax: RowSoftmax | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The largest attention probability (B, H_kv, n_keys), in float32, that any row of ``hidden`` pays each of
    the first ``n_keys`` keys, over the rows and the query heads of each key/value group.

    ``row_scale`` (B, R, >= 0) and ``col_scale`` (B, H_kv, g, n_keys), when given, multiply each probability of
    row ``r`` and of the key in query head ``(kv head, j)`` before the maximum (KVzip+'s weights).

    ``hidden`` (B, R, d) is the layer's normed input, whose rows are the last ``R`` of the ``T_k`` ``keys``
    (B, H_kv, T_k, D, rotated); row ``r`` sees keys ``<= T_k - R + r``. The result equals
    ``rows_attention(...)[..., :n_keys]`` maximised over rows and each group's query heads (up to rounding).

    How: a probability is ``exp(q . k - lse(q))``, with ``lse`` the row's softmax normaliser, so its maximum over
    rows is ``exp`` of the maximum of ``q . k - lse(q)`` (minus ``log`` of the row's scale, taken relative to the
    largest scale, which multiplies the result back). Rows go in blocks of about ``cells`` scores, and a key's
    maximum runs over contiguous memory (keys are the rows of each block's product). On CPU the default blocks
    of 16 rows or more hold a multiple of 32 rows (up to twice the cells) and a bfloat16 block is cast to
    float32 before its maximum: a maximum over 29 rows, or over bfloat16, does not vectorise there and costs
    several times the block's product. Two ways to get there:

    - ``fused`` (the default on CUDA): ``lse`` from the flash kernel (:func:`row_logsumexp`, which never writes
      the scores out), then ``q . k - lse`` out of one matrix product, the queries extended by ``-lse`` (in two
      bfloat16 parts, high and low, so that a large normaliser loses no precision) and the keys by ones: each
      block's scores are written once and read once. Blocks of 256M scores by default (fewer kernel launches).
    - not fused (the default elsewhere): each block's scores over every key in float32, its rows' ``lse`` from
      them, then the maximum; blocks of 2M scores by default, so that a block stays in the processor's cache,
      where the flash kernel's second pass would cost more than the product it saves.

    ``softmax``: the rows' queries and normalisers as the layer's own attention pass recorded them
    (:func:`ragcore.cache.record_row_softmax`, a :class:`RowSoftmax` of this layer and call); then the queries
    are not projected again, no normaliser is computed, and the fused way runs on every device (blocks of 2M
    scores off CUDA): the scores are one product over the first ``n_keys`` keys and a maximum.

    ``dtype``: the dtype of the score product, fused way only (default: the queries'; a dtype given makes the
    way fused). The normalisers come first, from the queries as they are (recorded, or :func:`row_logsumexp`);
    then queries and keys are cast for the product, which accumulates in float32 and rounds ``q . k - lse``
    once. ``torch.bfloat16`` for a float32 model on a processor with bfloat16 dot products
    (:func:`bfloat16_products`) takes about half the time of float32 scores there (the product a third). The
    inputs keep 8 significant bits, so a probability's relative error grows with ``|q| |k|`` (a few percent for
    large logits), and since the normalisers do not carry the product's rounding (as a bfloat16 model's own
    do), the error is about twice a bfloat16 model's: on a random qwen2.5-0.5b-shaped layer, a median relative
    error of about 1% against 0.5% (tests/ragcore/test_cuda.py checks the order and the bounds).

    KVzip's reconstruction scores (``compress.kv.kvzip``) are this, over every reconstruction row; measured by
    ``python -m bench.compress_cost``. Raises ``ConfigError`` when the rows or ``n_keys`` do not fit the keys.
    """
    n_h, n_kv, d = head_counts(attn)
    g = n_h // n_kv
    b, r = hidden.shape[:2]
    t_k = keys.shape[-2]
    offset = t_k - r
    if not 0 <= n_keys <= t_k or offset < 0:
        raise ConfigError(f"max_attention: {r} rows and n_keys={n_keys} do not fit {t_k} keys")
    if r == 0:
        return torch.zeros(b, n_kv, n_keys, dtype=torch.float32, device=hidden.device)
    if softmax is not None:
        if softmax.queries.shape != (b, n_h, r, d) or softmax.lse.shape != (b, n_h, r):
            raise ConfigError(
                f"max_attention: recorded rows {tuple(softmax.queries.shape)} / lse {tuple(softmax.lse.shape)} do "
                f"not fit {r} rows of {n_h} heads"
            )
        fused = True
    elif fused is None:
        fused = hidden.device.type == "cuda" or dtype is not None
    if dtype is not None and dtype not in _PRODUCT_DTYPES:
        names = ", ".join(map(str, _PRODUCT_DTYPES))
        raise ConfigError(f"max_attention: dtype must be one of {names}, got {dtype!r}")
    if dtype is not None and not fused:
        raise ConfigError(f"max_attention: dtype={dtype} needs the fused way, got fused={fused!r}")
    cpu = hidden.device.type == "cpu"
    whole = cells is None and cpu  # default blocks on CPU: a multiple of 32 rows
    if cells is None:
        cells = 1 << 28 if fused and hidden.device.type == "cuda" else 1 << 21
    if softmax is not None:
        q = softmax.queries
    else:
        q = project_queries(attn, hidden, position_embeddings) * getattr(attn, "scaling", d**-0.5)  # (B, H, R, D)
    shift = torch.zeros(b, r, dtype=torch.float32, device=hidden.device)  # log of each row's relative scale
    top = None
    if row_scale is not None:
        rs = row_scale.float()
        top = rs.amax(1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)  # (B, 1)
        shift = (rs / top).log()  # <= 0; -inf for a row of scale 0
    best = torch.full((b, n_kv, n_keys, g), float("-inf"), dtype=torch.float32, device=hidden.device)
    step = max(1, cells // max(1, n_h * (n_keys if fused else t_k)))
    if whole and step >= 16:  # a key's maximum over 32 rows (or a multiple) vectorises; over 29, say, it runs 5x slower
        step = max(32, step - step % 32)  # at most twice the cells
    rows = torch.arange(r, device=hidden.device)
    if fused:
        lse = (row_logsumexp(q, keys) if softmax is None else softmax.lse) - shift[:, None]  # (B, H, R); +inf: scale 0
        q = q if dtype is None else q.to(dtype)  # the normalisers above from the queries as they came
        hi = lse.to(q.dtype)
        lo = torch.where(lse.isfinite(), lse - hi.float(), 0.0).to(q.dtype)
        pad = -(d + 2) % 8  # cuBLAS is fastest on sizes that are multiples of 8
        qa = torch.cat([q, -hi[..., None], -lo[..., None], q.new_zeros(b, n_h, r, pad)], -1).view(b, n_kv, g, r, -1)
        ka = keys[:, :, :n_keys].to(q.dtype)
        ka = torch.cat([ka, ka.new_ones(b, n_kv, n_keys, 2), ka.new_zeros(b, n_kv, n_keys, pad)], -1)
    else:
        qa = q.view(b, n_kv, g, r, d)
        ka = keys.to(q.dtype)
    for s in range(0, r, step):
        e = min(s + step, r)
        block = qa[:, :, :, s:e].reshape(b, n_kv, g * (e - s), -1).transpose(-1, -2)
        scores = torch.matmul(ka, block).view(b, n_kv, ka.shape[2], g, e - s)  # keys as rows
        if not fused:  # the block's normalisers from its own scores over every key
            scores = scores.float()
            scores[:, :, offset + s + 1 :].masked_fill_((rows[s + 1 :, None] > rows[None, s:e])[:, None], float("-inf"))
            lse = torch.logsumexp(scores, 2) - shift[:, None, None, s:e]  # (B, H_kv, g, R_b)
            scores = scores[:, :, :n_keys] - lse[:, :, None]
        elif offset + s + 1 < n_keys:  # keys past the block's first row's own: later rows only
            grid = scores[:, :, offset + s + 1 :]
            grid.masked_fill_((rows[s + 1 : n_keys - offset, None] > rows[None, s:e])[:, None], float("-inf"))
        # on CPU a bfloat16 maximum runs element by element: float32 first
        best = torch.maximum(best, (scores.float() if cpu else scores).amax(-1).float())
    probs = best.transpose(-1, -2).exp()  # (B, H_kv, g, n_keys)
    if top is not None:
        probs = probs * top[:, :, None, None]
    if col_scale is not None:
        probs = probs * col_scale.float()
    return probs.amax(2)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM (Llama, Qwen2, Mistral, ... share the ``model.model.layers`` shape)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ConfigError(f"{type(model).__name__} has no model.layers; supported: Llama-style decoder models")
    return layers


@dataclass
class LayerInput:
    """The input of decoder layer ``layer``: what :func:`rows_attention` needs to read that layer's attention.

    ``attn``: the layer's attention module; ``hidden``: its normed input (B, T, d), in the model's dtype;
    ``position_embeddings``: the rotary (cos, sin), each (B, T, D), at positions 0..T-1."""

    layer: int
    attn: nn.Module
    hidden: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]


def _layer_masks(model: nn.Module, embeds: torch.Tensor, positions: torch.Tensor, kinds: set[str]) -> dict:
    """The decoder's attention mask per layer kind (``full_attention``, ``sliding_attention``), as the model's own
    forward builds them (``transformers.masking_utils``, for the model's attention implementation; None where SDPA
    can rely on ``is_causal``), for an unpadded batch without a cache. Arguments are passed by name where the
    installed transformers has them (``cache`` was ``past_key_values`` before 5.x)."""
    from transformers import masking_utils

    makers = {
        "full_attention": masking_utils.create_causal_mask,
        "sliding_attention": masking_utils.create_sliding_window_causal_mask,
    }
    out = {}
    for kind in kinds:
        if kind not in makers:
            raise ConfigError(f"layer kind {kind!r} is not supported; supported: {', '.join(makers)}")
        make = makers[kind]
        params = inspect.signature(make).parameters
        kw = {"config": model.config, "attention_mask": None, "position_ids": positions}
        kw["inputs_embeds" if "inputs_embeds" in params else "input_embeds"] = embeds
        for name in ("cache", "past_key_values"):
            if name in params:
                kw[name] = None
        if "cache_position" in params:
            kw["cache_position"] = positions[0]
        out[kind] = make(**kw)
    return out


@torch.inference_mode()
def layer_input(model: nn.Module, input_ids: torch.Tensor, layer: int) -> LayerInput:
    """Run a causal LM's decoder only as far as decoder layer ``layer`` and return that layer's normed input.

    ``input_ids`` (B, T), unpadded, no cache; positions 0..T-1. ``layer``: an index into :func:`decoder_layers`,
    negative counting from the last (-1: the last layer). The embeddings, the model's own decoder layers
    ``0..layer-1`` (called directly, with the causal masks and rotary embedding the model's forward would pass
    them: no hooks, so concurrent calls on one model are safe; the model's own attention implementation, SDPA or
    flash, never eager) and layer ``layer``'s ``input_layernorm`` run; nothing after that: not the layer's
    attention, not the layers after it, not the final norm or the LM head. So reading layer ``l`` of ``L`` costs
    about ``l / L`` of a forward pass (InfiniRetri reads layer 18 of smollm2-135m's 30). The result equals
    ``layer.input_layernorm(model(..., output_hidden_states=True).hidden_states[layer])``, the input
    :func:`attention_to_spans` reads (tests/ragcore/test_attention.py). Supported: decoders of the Llama shape
    (``model.model.embed_tokens``, ``.layers``, ``.rotary_emb``; Llama, Qwen2, Mistral, ...).

    Runs under ``torch.inference_mode`` (the tensors returned are inference tensors: read them under it too).
    Raises ConfigError when ``layer`` is out of range or the model lacks those parts.
    """
    blocks = decoder_layers(model)
    n = len(blocks)
    if not -n <= layer < n:
        raise ConfigError(f"layer must be in [{-n}, {n - 1}] for {type(model).__name__}, got {layer!r}")
    li = layer % n
    inner = getattr(model, "model", model)
    embed = getattr(inner, "embed_tokens", None)
    if embed is None:
        raise ConfigError(f"{type(model).__name__} has no model.embed_tokens; supported: Llama-style decoder models")
    ids = input_ids.to(model.device)
    h = embed(ids)
    pos = torch.arange(ids.shape[1], device=ids.device)[None]
    pe = rotary_embedding(model, h, pos)
    cfg = model.config
    kinds = list(getattr(cfg, "layer_types", None) or [])
    if len(kinds) < n:  # no per-layer kinds (Llama, Mistral): one kind for every layer, as their forward does
        kinds = ["sliding_attention" if getattr(cfg, "sliding_window", None) else "full_attention"] * n
    masks = _layer_masks(model, h, pos, set(kinds[:li]))
    for i in range(li):
        h = blocks[i](h, attention_mask=masks[kinds[i]], position_ids=pos, position_embeddings=pe)
        if isinstance(h, tuple):  # transformers 4.x decoder layers return (hidden, ...)
            h = h[0]
    block = blocks[li]
    return LayerInput(li, block.self_attn, block.input_layernorm(h), pe)


@dataclass
class SpanAttention:
    """Attention of the chosen rows. ``tokens``: (L, H, R, T) or reduced; ``spans``: name -> (L, H) mass."""

    rows: torch.Tensor
    layers: list[int]
    tokens: torch.Tensor
    spans: dict[str, torch.Tensor]


@torch.inference_mode()
def attention_to_spans(
    model: nn.Module,
    input_ids: torch.Tensor,
    spans: dict[str, tuple[int, int]] | None = None,
    rows: str | tuple[int, int] | Sequence[int] = "last",
    layers: Sequence[int] | None = None,
    reduce_rows: bool = True,
) -> SpanAttention:
    """Attention that ``rows`` pay to each token and span, per layer and head, from one forward pass.

    ``rows``: ``"last"`` (the next-token position), a span name (e.g. ``"question"``), a (start, end) pair,
    or explicit indices. ``layers``: indices into :func:`decoder_layers` (negative: from the last; reported
    non-negative in ``SpanAttention.layers``), default all. The forward pass runs with the model's own attention
    implementation; probabilities are recomputed for the chosen rows only. Returns tokens (L, H, R, T), or (L, H, T)
    averaged over rows. Raises ConfigError for rows or layers out of range.
    """
    spans = spans or {}
    ids = input_ids.to(model.device)
    T = ids.shape[-1]
    if isinstance(rows, str):
        if rows == "last":
            row_idx = torch.tensor([T - 1])
        elif rows in spans:
            row_idx = torch.arange(*spans[rows])
        else:
            raise ConfigError(f"unknown rows {rows!r}; options: 'last', {', '.join(map(repr, spans))}")
    elif isinstance(rows, tuple) and len(rows) == 2:
        row_idx = torch.arange(*rows)
    else:
        row_idx = torch.as_tensor(list(rows), dtype=torch.long)
    if row_idx.numel() == 0 or int(row_idx.min()) < 0 or int(row_idx.max()) >= T:
        raise ConfigError(f"query rows {rows!r} are empty or outside the prompt of {T} tokens")
    blocks = decoder_layers(model)
    n = len(blocks)
    chosen = list(range(n)) if layers is None else [int(i) for i in layers]
    if any(not -n <= i < n for i in chosen):
        raise ConfigError(f"layers must be in [{-n}, {n - 1}] for {type(model).__name__}, got {list(layers or [])!r}")
    chosen = [i % n for i in chosen]  # hidden_states[-1] is the model's output, not the last layer's input
    out = model(input_ids=ids, output_hidden_states=True, use_cache=False, logits_to_keep=1)
    pos = torch.arange(T, device=ids.device)[None]
    per_layer = []
    for li in chosen:
        layer = blocks[li]
        h = layer.input_layernorm(out.hidden_states[li])
        pe = rotary_embedding(model, h, pos)
        a = rows_attention(layer.self_attn, h, pe, row_idx.to(ids.device))[0]  # (H, R, T)
        per_layer.append(a.mean(1) if reduce_rows else a)
    tokens = torch.stack(per_layer).cpu()
    span_mass = {
        name: tokens[..., a:b].sum(-1) if reduce_rows else tokens[..., a:b].sum(-1).mean(-1)
        for name, (a, b) in spans.items()
    }
    return SpanAttention(row_idx, chosen, tokens, span_mass)
