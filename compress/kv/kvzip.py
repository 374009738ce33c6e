"""KVzip: score each cached token by the attention it receives while the model repeats the context."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from compress.kv.adaptive import adaptive_budgets
from compress.kv.base import KVBudget, KVCall, KVCompressor, LayerPrefill, priority_floor
from ragcore import cache as kvcache
from ragcore.attention import RowSoftmax, bfloat16_products, max_attention
from ragcore.errors import ConfigError
from ragcore.stages import option

if TYPE_CHECKING:
    from ragcore.prompt import Prompt

logger = logging.getLogger(__name__)


@dataclass
class KVzip(KVCompressor):
    """KVzip (Kim et al., 2025, https://arxiv.org/abs/2505.23416): question-agnostic scores from context
    reconstruction. After the prefill of ``T`` tokens, the model reads "repeat the previous context" followed by
    the context itself (teacher-forced, ``chunk`` tokens at a time, each chunk on the full cache, then cropped
    off); a cached token's score in a key/value head is the largest attention any reconstruction query of the
    head's group pays it. Tokens the model needs to reproduce the context are those a later question needs too,
    so one compressed cache serves many questions.

    The reconstruction is a second prefill of about ``T`` tokens (the paper's cost, about 2x one prefill); it runs
    once every layer holds its cache, so the prefill's peak memory is that of an uncompressed cache plus a chunk.
    Its scores come from :func:`ragcore.attention.max_attention`: one matrix product per block of rows and a
    maximum, with the queries and each row's softmax normaliser that the layer's own flash attention pass left
    behind (:func:`ragcore.cache.record_row_softmax`; a model on another attention implementation recomputes
    them). Measured in plain prefills by ``python -m bench.compress_cost`` (docs/RESULTS.md,
    ``compress-cost-gpu`` and ``compress-cost-cpu``).
    Without a tokenizer on the prompt (a bare model) the reconstruction is the context alone, no instruction.

    Measured options (docs/RESULTS.md): question-agnostic, the development slice chose ``assistant_turn=True,
    plus=True, safeguard=0.2`` among the six combinations tried (kv-agnostic-kvzip-dev-gpu; all within 1.3 points
    of each other), and ``compress.kv.DEFAULT_AGNOSTIC`` is that setting. The class defaults stay those of this
    class's first version (no assistant turn, no KVzip+ weights, no floor), which the query-aware runs measured
    (kv-ask-default-gpu).

    Parameters
    ----------
    scope:
        ``"global"`` (the paper and kvpress's default): one threshold over every layer and head, so budgets move
        between layers and heads (uneven budgets enforced by masks, ``masks_only``); ``"heads"`` (kvpress's
        ``layerwise=True``): every layer keeps ``k x H_kv`` tokens, spread over its heads by one threshold per
        layer (masks too); ``"layer"``: ``k`` tokens in every head of every layer (a physically smaller cache).
        Measured question-agnostic with qwen2.5-0.5b: both per-layer scopes lose most of key-value retrieval
        (``"heads"`` about 40 points, kvzip-scope-dev-gpu; ``"layer"`` under KVzap's scores every one of 60
        questions, kv-reuse-kvzap-layer-cpu), since the heads that copy long strings need more than their
        layer's share; ``"global"`` loses about 1 point there.
    chunk:
        Context tokens reconstructed per forward pass (memory O(chunk x T) per layer).
    instruction:
        The text before the repeated context (tokenised with the prompt's tokenizer).
    assistant_turn:
        End the instruction with the chat template's turn change (the user turn closed, the assistant's header),
        so that the model repeats the context as its own answer: the layout of the paper's code and of kvpress's
        ``KVzipPress``. No effect for a tokenizer without a chat template.
    plus:
        KVzip+ (Jegou et al., 2026, KVzap, https://arxiv.org/abs/2601.07891; kvpress's
        ``kvzip_plus_normalization``): each attention probability is weighted by what the pair writes into the
        residual stream, ``||W_O v||`` of the query head, divided by the norm of the reconstruction query's
        normed hidden state, before the maximum.
    safeguard:
        Share of the uniform budget ``k`` that every head keeps at least (AdaKV's safeguard) with
        ``scope="global"`` or ``"heads"``; 0 leaves one token per head (the paper's pure threshold). Measured
        question-agnostic: 0.2 (compress.kv.DEFAULT_AGNOSTIC) and 0.5 within half a point of each other pooled
        over 1283 unseen NQ-open questions (kvzip-scope-head-gpu).
    kernel_size:
        Width (odd) of a max-pool over each head's scores along the tokens (1: none), so that a token the
        reconstruction needs keeps its neighbours' scores up too: a phrase is kept or dropped together (ChunkKV's
        argument, https://arxiv.org/abs/2502.00299; SnapKV pools its scores likewise). Measured question-agnostic:
        3 and 7 scored below 1 on the development slice
        (kv-agnostic-kernel-dev-gpu).
    keep_system_prompt:
        Keep the prompt's tokens before its first passage (the chat template's system turn with the instruction,
        and the user turn's opening) in every head, and reconstruct the passages on only: the layout of the
        paper's code (its ``evict_range`` starts after the system prompt, and its reconstruction repeats the
        context alone). The system prompt counts in the budget, as ``n_sink`` does, and is kept only while it
        takes at most half of each head's tokens (a warning otherwise, and it is scored like the passages); the
        sinks come first. Needs a ``Prompt`` with passages (``Generator`` gives it); no effect otherwise. Measured
        question-agnostic with qwen2.5-0.5b: 2 questions of 300 ahead on the development slice, 0.5 points behind
        pooled over 1283 unseen questions (docs/RESULTS.md, kvzip-system-dev-gpu and kvzip-system-head-gpu), so
        off in ``compress.kv.DEFAULT_AGNOSTIC``.
    score_dtype:
        The dtype of the reconstruction's matrix products: ``"model"`` (the model's), ``"bfloat16"``, or ``"auto"``
        (bfloat16 for a float32 model on a CPU with bfloat16 dot products,
        :func:`ragcore.attention.bfloat16_products`, else the model's). In bfloat16 the score product runs in
        bfloat16 (float32 accumulation; about twice the rounding a bfloat16 model's scores have on a GPU, see
        :func:`ragcore.attention.max_attention`), and for a float32 model so does the reconstruction pass, under
        ``torch.autocast`` (its outputs only feed the scores; the kept pairs are the prefill's, untouched). On
        such a CPU a bfloat16 linear layer takes about a third of float32's time; the reconstruction's attention
        stays float32 where it runs as the recorded flash pass (:func:`ragcore.cache.record_row_softmax`, its
        usual path; no faster in bfloat16 there), and elsewhere (a padded batch, another attention
        implementation) autocast runs it in bfloat16. Accuracy: with a float32 model, bfloat16 against float32
        changed NQ-open's answers by +0.1 ± 0.4 points over 1283 questions (docs/RESULTS.md,
        kvzip-dtype-f32-gpu). Seconds: ``python -m bench.compress_cost`` (compress-cost-cpu-autocast: KVzip+ from
        2.7-2.8 to 2.0 plain prefills on such a CPU). ``"auto"`` is resolved
        on the machine that compresses: a saved context keeps the pairs chosen there, and its label (which
        ``ragcore ask --context-cache`` matches) names the option, not the dtype it became.
    n_sink:
        Leading tokens always kept.
    ratio, budget, protect_last:
        As in :class:`KVCompressor`.
    """

    scope: str = option("global", choices=("global", "heads", "layer"))
    chunk: int = option(2048, minimum=1)
    instruction: str = option("\n\nRepeat the previous context exactly.")
    assistant_turn: bool = option(False)
    plus: bool = option(False)
    safeguard: float = option(0.0, low=0, high=1)
    kernel_size: int = option(1, minimum=1)
    keep_system_prompt: bool = option(False)
    score_dtype: str = option("auto", choices=("auto", "model", "bfloat16"))
    n_sink: int = option(4, minimum=0)
    name: ClassVar[str] = "kvzip"
    attention_based: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kernel_size % 2 == 0:
            raise ConfigError(
                f"kvzip: kernel_size must be odd (a window centred on each token), got {self.kernel_size!r}",
                param="kernel_size",
            )
        if self.scope == "layer" and self.safeguard > 0:
            raise ConfigError(
                f"kvzip: safeguard={self.safeguard!r} applies to scope='global' or 'heads' (scope='layer' keeps k tokens "
                "in every head)",
                param="safeguard",
            )

    # ---- the budget --------------------------------------------------------------------------------------
    def budget_rule(self, t: int, n_layers: int, n_kv: int) -> KVBudget:
        if self.scope == "layer":
            return super().budget_rule(t, n_layers, n_kv)
        k = self.n_keep(t)
        return KVBudget(t if k >= t else self.floor(k), n_layers * n_kv * k)

    def floor(self, k: int) -> int:
        """Tokens every head keeps at least, of a uniform budget ``k`` (``scope="global"`` or ``"heads"``)."""
        return min(k, max(1, int(self.safeguard * k)))

    # ---- the reconstruction --------------------------------------------------------------------------------
    @contextmanager
    def apply(self, model: nn.Module, cache: Any = None, prompt: Prompt | None = None) -> Iterator[KVCall]:
        """As :meth:`KVCompressor.apply`. The context to repeat is the ``prompt``'s tokens (each call its own, so
        concurrent calls on one model stay apart); without a prompt (a bare ``apply`` around model calls, one at a
        time) the token ids the model reads are recorded by a hook on its input embeddings."""
        with super().apply(model, cache, prompt) as call:
            if prompt is not None:
                call.inputs["input_ids"] = prompt.input_ids
                yield call
                return

            def record(_module: nn.Module, args: tuple) -> None:
                if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 2:
                    call.inputs["input_ids"] = args[0]

            with kvcache.HOOKS_LOCK:
                handle = model.get_input_embeddings().register_forward_pre_hook(record)
            try:
                yield call
            finally:
                with kvcache.HOOKS_LOCK:
                    handle.remove()

    def score(self, x: LayerPrefill) -> torch.Tensor:
        raise NotImplementedError("kvzip scores every layer at once, after the last layer's prefill (see keep)")

    def keep(self, x: LayerPrefill, k: int) -> None:
        if x.call.gather(x.layer, k) is None:  # wait for the last layer: the reconstruction runs through them all
            return
        scores = [self.pool(s) for s in self.reconstruction_scores(x.call, x.keys.shape[-2])]  # per layer
        self.prune_all(x.call, scores, k)

    def prune_all(self, call: KVCall, scores: list[torch.Tensor], k: int) -> None:
        """Prune every layer by its scores (B, H_kv, T), attention-like (comparable across layers and heads, <= 1
        where they matter): ``k`` tokens per head (``scope="layer"``), the top ``H_kv x k`` (head, token) entries of
        each layer (``scope="heads"``) or the top ``L x H_kv x k`` (layer, head, token) entries of the whole cache
        (``scope="global"``), every head keeping ``floor(k)`` at least in the last two."""
        t, h = scores[0].shape[-1], scores[0].shape[1]
        prot, floor = call.protected_floor(t, scores[0].device)
        system = self.system_end(call, t)
        if system:
            prot = prot.clone()
            prot[:system] = True
            floor = priority_floor(prot)
            floor[: self.n_sink] = 3e30  # above every other protected position (<= 2e30): the sinks first
        elif self.keep_system_prompt and (span := self.system_span(call, t)):
            logger.warning(
                "kvzip: keep_system_prompt: the %d tokens before the first passage are over half of the %d kept per "
                "head, so they are scored like the passages (lower the ratio to keep them)",
                span,
                self.n_keep(t),
            )
        if self.scope == "layer":
            for layer, s in enumerate(scores):
                idx, _ = self.select(torch.maximum(s, floor), k)
                self.prune_layer(call, layer, idx, None)
            return
        if self.scope == "heads":  # one pool per layer
            budgets = torch.cat([adaptive_budgets(s, prot, k, self.floor(k), normalise=False) for s in scores], 1)
        else:  # one pool over the whole cache
            budgets = adaptive_budgets(torch.cat(scores, 1), prot, k, self.floor(k), normalise=False)  # (B, L x H_kv)
        for layer, s in enumerate(scores):
            idx, mask = self.select(torch.maximum(s, floor), k, budgets[:, layer * h : (layer + 1) * h])
            self.prune_layer(call, layer, idx, torch.ones_like(idx, dtype=torch.bool) if mask is None else mask)

    def product_dtype(self, keys: torch.Tensor) -> torch.dtype | None:
        """The dtype of the reconstruction's linear layers and score product for a model whose cache holds ``keys``
        (None: the model's)."""
        if self.score_dtype == "bfloat16":
            return torch.bfloat16
        if self.score_dtype == "auto" and keys.dtype == torch.float32 and keys.device.type == "cpu":
            return torch.bfloat16 if bfloat16_products(keys.device) else None
        return None

    def pool(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores (B, H_kv, T) max-pooled over ``kernel_size`` neighbouring tokens (same shape)."""
        if self.kernel_size == 1:
            return scores
        return F.max_pool1d(scores, self.kernel_size, stride=1, padding=self.kernel_size // 2)

    @staticmethod
    def system_span(call: KVCall, t: int) -> int:
        """Where the prompt's first passage starts, within the ``t`` cached tokens (the tokens before it are the
        system prompt); 0 without a prompt with passages."""
        prompt = call.prompt
        if prompt is None or not prompt.passages:
            return 0
        return min(prompt.passage_spans()[0][0], t)

    def system_end(self, call: KVCall, t: int) -> int:
        """With ``keep_system_prompt``, the tokens kept and not reconstructed: the system prompt
        (:meth:`system_span`) when it takes at most half of the ``n_keep(t)`` tokens kept per head, so that the
        passages keep the other half at least; 0 otherwise."""
        span = self.system_span(call, t) if self.keep_system_prompt else 0
        return span if 2 * span <= self.n_keep(t) else 0

    def repeat_ids(self, call: KVCall, t: int) -> list[torch.Tensor]:
        """The reconstruction inputs: per chunk of the context, the instruction then the chunk's tokens."""
        ids = call.inputs["input_ids"]
        if call.prompt is not None:  # the prompt's first t tokens are what the cache holds
            ids = ids[:, :t].to(call.model.device)
        device = ids.device
        context = ids[:, -t:] if ids.shape[1] >= t else ids  # a prefill after cached tokens: its own tokens
        context = context[:, self.system_end(call, t) :]  # the passages on, with keep_system_prompt
        tokenizer = getattr(call.prompt, "tokenizer", None)
        text = self.instruction + (assistant_header(tokenizer) if self.assistant_turn and tokenizer is not None else "")
        head = (
            torch.tensor([tokenizer.encode(text, add_special_tokens=False)], device=device)
            if tokenizer is not None and text
            else context[:, :0]
        )
        return [torch.cat([head, context[:, s : s + self.chunk]], 1) for s in range(0, context.shape[1], self.chunk)]

    @torch.no_grad()
    def reconstruction_scores(self, call: KVCall, t: int) -> list[torch.Tensor]:
        """Per layer, the largest attention (B, H_kv, T) that a reconstruction query pays each of the ``T`` cached
        positions, over every chunk's queries and the query heads of each key/value group."""
        model = call.model
        base = getattr(model, model.base_model_prefix, model)
        best: dict[int, torch.Tensor] = {}
        norms: dict[int, torch.Tensor] = {}  # KVzip+: per layer, the context values' output norms
        recorded: dict[int, RowSoftmax] = {}  # per layer, the chunk's queries and normalisers from its attention

        first_keys = kvcache.get_kv(call.cache, 0)[0]
        dtype = self.product_dtype(first_keys)
        device = first_keys.device.type
        # a float32 model's reconstruction under autocast to the product's dtype (its outputs only feed the scores;
        # the cached pairs stay the prefill's; the scores below run as written, autocast off in the hook). Not a
        # half-precision model's: autocast refuses to join float16 with other dtypes
        cast = dtype is not None and first_keys.dtype == torch.float32 and dtype != torch.float32

        def capture(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if kvcache.from_call(kwargs) is not call.cache:
                return
            with torch.autocast(device, enabled=False) if cast else nullcontext():
                score(module, args, kwargs)

        def score(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            keys, values = kvcache.get_kv(call.cache, module.layer_idx)
            weights = {}
            if self.plus:  # the context's ||W_O v|| once per layer, whatever the number of chunks
                if module.layer_idx not in norms:
                    norms[module.layer_idx] = output_norms(module, values[:, :, :t])
                rows = hidden.float().norm(dim=-1).clamp_min(1e-6).reciprocal()
                weights = {"row_scale": rows, "col_scale": norms[module.layer_idx]}
            soft = recorded.pop(module.layer_idx, None)  # the layer's own queries and normalisers, if it left them
            pe = kwargs["position_embeddings"]
            a = max_attention(module, hidden, pe, keys, t, softmax=soft, dtype=dtype, **weights)
            lay = module.layer_idx
            best[lay] = a if lay not in best else torch.maximum(best[lay], a)

        for piece in self.repeat_ids(call, t):
            pos = torch.arange(t, t + piece.shape[1], device=piece.device)[None]
            lowered = torch.autocast(device, dtype=dtype) if cast else nullcontext()
            with kvcache.attention_hooks(model, post=capture), kvcache.record_row_softmax(recorded), lowered:
                kvcache.call(base, call.cache, input_ids=piece, position_ids=pos, use_cache=True)
            for layer in range(call.n_layers):  # crop the reconstruction off again
                k, v = kvcache.get_kv(call.cache, layer)
                kvcache.set_kv(call.cache, layer, k[:, :, :t], v[:, :, :t])
        if not best:  # nothing to reconstruct (every cached token kept as the system prompt): no scores
            keys = kvcache.get_kv(call.cache, 0)[0]
            return [keys.new_zeros(*keys.shape[:2], t, dtype=torch.float32) for _ in range(call.n_layers)]
        return [best[layer] for layer in range(call.n_layers)]


def assistant_header(tokenizer: Any) -> str:
    """The chat template's text between a user message and the assistant's answer (the user turn's end and the
    generation prompt), or "" for a tokenizer without a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return ""
    marker = "\ue000"  # a private-use character: no template writes it
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": marker}], add_generation_prompt=True, tokenize=False
        )
    except Exception as e:  # jinja2's TemplateError, raised by the template itself (e.g. it wants a system turn)
        raise ConfigError(
            f"kvzip: the tokenizer's chat template refuses a lone user message ({e}); use assistant_turn=False",
            param="assistant_turn",
        ) from e
    return text[text.rindex(marker) + 1 :]


def output_norms(attn: nn.Module, values: torch.Tensor) -> torch.Tensor:
    """``||W_O v||`` (B, H_kv, g, T) in float32: the norm of what each value (B, H_kv, T, D) writes into the residual
    stream through each query head of its group, as ``sqrt(v^T (W_h^T W_h) v)`` with ``W_h`` the query head's
    (d_model, D) slice of the output projection."""
    b, n_kv, t, d = values.shape
    w = attn.o_proj.weight.float()  # (d_model, H x D)
    n_h = w.shape[1] // d
    wh = w.view(-1, n_h, d).transpose(0, 1)  # (H, d_model, D)
    gram = (wh.transpose(1, 2) @ wh).view(n_kv, n_h // n_kv, d, d)  # (H_kv, g, D, D)
    v = values.float()
    vg = torch.einsum("bktd,kgde->bkgte", v, gram)
    return (vg * v[:, :, None]).sum(-1).clamp_min(0).sqrt()
