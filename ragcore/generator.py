"""The generator: a Hugging Face causal LM with a chat prompt, greedy or sampled decoding and streaming.

Decoding is a plain loop over the model (prefill once, then one token at a time on the KV cache), so that
later stages can act between prefill and decoding (KV-cache compression) and read the cache.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Generator as Generator_
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ragcore import cache as kvcache
from ragcore.errors import ConfigError
from ragcore.models import DEFAULT_GENERATOR, load_generator
from ragcore.prompt import Prompt, build_prompt
from ragcore.types import Chunk, ScoredChunk

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from compress.kv.base import KVCompressor

logger = logging.getLogger(__name__)


@dataclass
class GenerationConfig:
    """Decoding settings. ``temperature == 0`` is greedy; ``max_time`` is a wall-clock limit in seconds."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    max_time: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k!r}")
        if self.max_time is not None and self.max_time <= 0:
            raise ConfigError(f"max_time must be positive seconds, got {self.max_time!r}")


@dataclass
class Generation:
    """What one generation produced, with its costs."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    prefill_s: float
    decode_s: float
    stopped: str  # "eos" | "max_new_tokens" | "max_time"
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def decode_tok_s(self) -> float:
        return len(self.token_ids) / self.decode_s if self.decode_s > 0 else 0.0


# called between prefill and decoding with (model, cache, prompt); may compress the cache in place and
# return statistics (kv bytes, ...) to merge into Generation.stats
PrefillHook = Callable[["PreTrainedModel", Any, Prompt], dict[str, Any]]


class Generator:
    """Answers a question from passages with a causal LM from the model registry.

    ``__init__`` is light; the model loads in ``warm_up()`` (called on first use).
    """

    def __init__(self, model: str = DEFAULT_GENERATOR, device: str | None = None, dtype: str | None = None) -> None:
        self.model_name, self.device, self.dtype = model, device, dtype
        self.model: PreTrainedModel | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None

    @classmethod
    def from_model(
        cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None = None, name: str = "custom"
    ) -> Generator:
        """Wrap an already loaded model (e.g. a random-initialised one in a benchmark). Without a tokenizer,
        prompts must be given as ``Prompt`` objects, there is no end-of-sequence stop and the text is empty."""
        g = cls(name)
        g.model, g.tokenizer = model.eval(), tokenizer
        g._set_eos()
        return g

    def warm_up(self) -> None:
        if self.model is None:
            self.model, self.tokenizer = load_generator(self.model_name, self.device, self.dtype)
            self._set_eos()

    def _set_eos(self) -> None:
        if self.tokenizer is None:
            self.eos_ids: set[int] = set()
            return
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_ids = set(eos)

    def prompt(
        self, question: str, passages: Sequence[Chunk | ScoredChunk] | None = None, system: str | None = None
    ) -> Prompt:
        self.warm_up()
        return build_prompt(self.tokenizer, question, passages, system)

    def generate(
        self,
        question: str | Prompt,
        passages: Sequence[Chunk | ScoredChunk] | None = None,
        config: GenerationConfig | None = None,
        on_prefill: PrefillHook | None = None,
        compressor: KVCompressor | None = None,
        query_aware: bool = False,
    ) -> Generation:
        """Generate an answer; ``question`` may be a ready ``Prompt``.

        ``compressor`` compresses the KV cache after prefill. By default (question-agnostic) only the prompt
        before the ``question`` span is prefilled under compression, so the compressed context does not depend
        on the question; the question tokens are then fed on the compressed cache. ``query_aware=True``
        prefills the whole prompt under compression. ``Generation.stats`` gets ``kv_bytes`` (held after
        prefill), ``kv_bytes_full`` (an uncompressed cache of the same prompt), ``masks_only`` and, with a
        compressor, ``kv_report``.
        """
        tokens = self._decode(question, passages, config or GenerationConfig(), on_prefill, compressor, query_aware)
        while True:  # the decode loop yields token ids and returns the Generation
            try:
                next(tokens)
            except StopIteration as done:
                return done.value

    def stream(
        self,
        question: str | Prompt,
        passages: Sequence[Chunk | ScoredChunk] | None = None,
        config: GenerationConfig | None = None,
        on_prefill: PrefillHook | None = None,
        compressor: KVCompressor | None = None,
        query_aware: bool = False,
    ) -> Iterator[str]:
        """Yield the answer as text pieces, token by token (pieces are decoded so multi-byte text stays whole).

        ``compressor`` and ``query_aware`` as in :meth:`generate`."""
        self.warm_up()
        ids: list[int] = []
        shown = ""
        for tok in self._decode(question, passages, config or GenerationConfig(), on_prefill, compressor, query_aware):
            ids.append(tok)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue
            yield text[len(shown) :]
            shown = text

    @torch.inference_mode()
    def generate_batch(
        self,
        prompts: Sequence[Prompt],
        config: GenerationConfig | None = None,
        compressor: KVCompressor | None = None,
        query_aware: bool = False,
    ) -> list[Generation]:
        """Generate for several ready prompts: each is prefilled (and compressed) on its own, as
        :meth:`generate` does, then all decode together as one batch, their caches left-padded to a common
        length and the padding masked (per layer and head, so head-wise budgets stay enforced).

        Greedy answers equal :meth:`generate`'s up to floating-point ties; sampled ones draw from one
        generator for the batch, so they differ from one-by-one sampling with the same seed. ``prefill_s`` is
        each prompt's own; ``decode_s`` is the batch's decoding time until that row stopped."""
        self.warm_up()
        cfg = config or GenerationConfig()
        if not prompts:
            return []
        for p in prompts:
            if not isinstance(p, Prompt):
                raise ConfigError(f"generate_batch takes ready Prompt objects, got {type(p).__name__!r}")
        model, dev = self.model, self.model.device
        gen = torch.Generator(device=dev)
        if cfg.seed is not None:
            gen.manual_seed(cfg.seed)
        caches, masks, firsts, stats, prefill_s = [], [], [], [], []
        for p in prompts:
            with contextlib.ExitStack() as hooks:
                t0 = time.perf_counter()
                cache, logits, st = self._prefill(p, compressor, query_aware, hooks)
                masks.append(compressor.head_masks() if compressor is not None else {})
                _sync(dev)
                prefill_s.append(time.perf_counter() - t0)
            caches.append(cache)
            firsts.append(logits)
            stats.append(st)
        batched = _BatchedCache(model, list(zip(caches, masks)), cfg.max_new_tokens)
        caches.clear()  # the batch cache holds copies: let the single-row caches go
        t1 = time.perf_counter()
        b = len(prompts)
        outs: list[list[int]] = [[] for _ in range(b)]
        stopped = ["max_new_tokens"] * b
        done_at = [0.0] * b
        live = list(range(b))
        logits = torch.cat(firsts)
        n = torch.tensor([len(p) for p in prompts], device=dev)
        with batched as cache:
            for step in range(cfg.max_new_tokens):
                if cfg.temperature == 0:
                    toks = logits.float().argmax(-1).tolist()
                else:
                    toks = [_pick(row.float(), cfg, gen) for row in logits]
                for i in list(live):
                    if toks[i] in self.eos_ids:
                        stopped[i] = "eos"
                    else:
                        outs[i].append(toks[i])
                        if len(outs[i]) < cfg.max_new_tokens:
                            continue
                    live.remove(i)
                    done_at[i] = time.perf_counter() - t1
                out_of_time = cfg.max_time is not None and time.perf_counter() - t1 > cfg.max_time
                if not live or out_of_time:
                    break
                logits = cache.step(torch.tensor(toks, device=dev)[:, None], n + step)
        _sync(dev)
        for i in live:  # stopped by the wall-clock limit
            stopped[i] = "max_time"
            done_at[i] = time.perf_counter() - t1
        return [
            Generation(
                self.tokenizer.decode(outs[i], skip_special_tokens=True).strip() if self.tokenizer else "",
                outs[i],
                len(prompts[i]),
                prefill_s[i],
                done_at[i],
                stopped[i],
                {**stats[i], "batch_size": b},
            )
            for i in range(b)
        ]

    def _prefill(
        self, prompt: Prompt, compressor: KVCompressor | None, query_aware: bool, hooks: contextlib.ExitStack
    ) -> tuple[Any, torch.Tensor, dict[str, Any]]:
        """Prefill ``prompt`` (compressing with ``compressor``, whose hooks join ``hooks``): the cache, the
        next-token logits (1, V) and the cache statistics."""
        model = self.model
        dev = model.device
        ids = prompt.input_ids.to(dev)
        n = ids.shape[1]
        cache = kvcache.new_cache(model.config)
        report = None
        stats: dict[str, Any] = {}
        if compressor is None:
            logits = kvcache.call(model, cache, input_ids=ids, use_cache=True, logits_to_keep=1).logits[:, -1]
        else:
            t0 = time.perf_counter()
            report = hooks.enter_context(compressor.apply(model))
            compressor.for_prompt(prompt)
            split = n if query_aware else prompt.question_start
            if split < n:  # the context alone: its logits are not needed, so the base model (no LM head) runs
                kvcache.call(
                    getattr(model, model.base_model_prefix, model), cache, input_ids=ids[:, :split], use_cache=True
                )
            else:
                logits = kvcache.call(model, cache, input_ids=ids, use_cache=True, logits_to_keep=1).logits[:, -1]
            _sync(dev)
            stats["context_prefill_s"] = time.perf_counter() - t0  # prefill + compression, before the question
            if split < n:  # the question, on the compressed cache, at its absolute positions
                logits = kvcache.feed(model, ids[:, split:], cache, split)
        stats["kv_bytes"] = kvcache.kv_bytes(cache)
        stats["kv_bytes_full"] = kvcache.bytes_per_token(cache) * n
        stats["masks_only"] = bool(report.masks_only) if report is not None else False
        if report is not None:
            stats["kv_report"] = report.to_dict()
        return cache, logits, stats

    @torch.inference_mode()
    def _decode(
        self,
        question: str | Prompt,
        passages: Sequence[Chunk | ScoredChunk] | None,
        cfg: GenerationConfig,
        on_prefill: PrefillHook | None,
        compressor: KVCompressor | None = None,
        query_aware: bool = False,
    ) -> Generator_[int, None, Generation]:
        self.warm_up()
        prompt = question if isinstance(question, Prompt) else self.prompt(question, passages)
        model = self.model
        dev = model.device
        n = len(prompt)
        gen = torch.Generator(device=dev)
        if cfg.seed is not None:
            gen.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        with contextlib.ExitStack() as hooks:  # the compressor's hooks live until decoding ends, then go
            cache, logits, stats = self._prefill(prompt, compressor, query_aware, hooks)
            stats.update((on_prefill(model, cache, prompt) if on_prefill else None) or {})
            _sync(dev)
            t1 = time.perf_counter()
            out: list[int] = []
            stopped = "max_new_tokens"
            for step in range(cfg.max_new_tokens):
                tok = _pick(logits[0].float(), cfg, gen)
                if tok in self.eos_ids:
                    stopped = "eos"
                    break
                out.append(tok)
                yield tok
                if cfg.max_time is not None and time.perf_counter() - t0 > cfg.max_time:
                    stopped = "max_time"
                    break
                if step + 1 == cfg.max_new_tokens:
                    break
                if compressor is not None:
                    logits = kvcache.feed(model, torch.tensor([[tok]], device=dev), cache, n + step)
                    continue
                pos = torch.tensor([[n + step]], device=dev)
                logits = kvcache.call(
                    model,
                    cache,
                    input_ids=torch.tensor([[tok]], device=dev),
                    position_ids=pos,
                    cache_position=pos[0],
                    use_cache=True,
                ).logits[:, -1]
        _sync(dev)
        t2 = time.perf_counter()
        text = self.tokenizer.decode(out, skip_special_tokens=True).strip() if self.tokenizer else ""
        return Generation(text, out, n, t1 - t0, t2 - t1, stopped, stats)


class _BatchedCache:
    """Several single-row caches (possibly compressed to different lengths per layer, possibly with per-head
    visibility masks) as one left-padded batch cache. Inside the ``with`` block a pre-hook on every layer's
    ``self_attn`` passes that layer's (B, H, 1, K) visibility mask, so padding and masked slots stay hidden;
    the hooks are removed when the block ends."""

    def __init__(self, model: PreTrainedModel, rows: list[tuple[Any, dict[int, torch.Tensor]]], max_new: int):
        from ragcore.attention import decoder_layers, head_counts

        self.model = model
        self.attns = [layer.self_attn for layer in decoder_layers(model)]
        n_h, n_kv, _ = head_counts(self.attns[0])
        dev = model.device
        layers, self.masks = [], []
        for li in range(kvcache.n_layers(rows[0][0])):
            kv = [kvcache.get_kv(c, li) for c, _ in rows]
            width = max(k.shape[-2] for k, _ in kv)
            vis = torch.zeros(len(rows), n_kv, width + max_new, dtype=torch.bool, device=dev)
            vis[..., width:] = True
            keys, values = [], []
            for i, ((k, v), (_, masks)) in enumerate(zip(kv, rows)):
                pad = width - k.shape[-2]
                keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
                values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
                vis[i, :, pad:width] = True
                if li in masks:  # head-wise budgets: the compressor's slots beyond a head's budget stay hidden
                    m = masks[li][0]
                    vis[i, :, pad : pad + m.shape[-1]] = m
            layers.append((torch.cat(keys), torch.cat(values)))
            full = vis.repeat_interleave(n_h // n_kv, dim=1)[:, :, None, :]  # (B, H, 1, K + max_new)
            if getattr(model.config, "_attn_implementation", "sdpa") == "eager":
                dt = keys[0].dtype
                full = torch.zeros(full.shape, dtype=dt, device=dev).masked_fill(~full, torch.finfo(dt).min)
            self.masks.append(full)
        self.cache = kvcache.new_cache(model.config, layers)
        self.handles: list[Any] = []

    def __enter__(self) -> _BatchedCache:
        for li, attn in enumerate(self.attns):
            self.handles.append(attn.register_forward_pre_hook(self._hook(li), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _hook(self, li: int) -> Callable:
        def pre(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            k = kvcache.seq_len(self.cache, li) + 1  # the cached slots and the one being fed
            return args, {**kwargs, "attention_mask": self.masks[li][..., :k]}

        return pre

    def step(self, toks: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (B, 1) at absolute ``positions`` (B,); the next-token logits (B, V)."""
        slot = kvcache.seq_len(self.cache, 0)
        return kvcache.call(
            self.model,
            self.cache,
            input_ids=toks,
            position_ids=positions[:, None],
            cache_position=torch.tensor([slot], device=toks.device),
            use_cache=True,
        ).logits[:, -1]


def _pick(logits: torch.Tensor, cfg: GenerationConfig, gen: torch.Generator) -> int:
    if cfg.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(logits, min(cfg.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    if cfg.top_p < 1:
        sp, si = torch.sort(probs, descending=True)
        drop = torch.cumsum(sp, -1) - sp > cfg.top_p
        sp[drop] = 0
        probs = torch.zeros_like(probs).scatter(0, si, sp)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
