"""The generator: a Hugging Face causal LM with a chat prompt, greedy or sampled decoding and streaming.

Decoding is a plain loop over the model (prefill once, then one token at a time on the KV cache), so that
later stages can act between prefill and decoding (KV-cache compression) and read the cache.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from collections.abc import Generator as Generator_
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from ragcore import cache as kvcache
from ragcore.errors import ConfigError, PromptTooLongError
from ragcore.models import DEFAULT_GENERATOR, load_generator
from ragcore.prompt import Prompt, build_prompt, build_prompts
from ragcore.registry import registry
from ragcore.types import Chunk, ScoredChunk

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from compress.kv.base import KVCompressor
    from ragcore.context_cache import CompressedContext

logger = logging.getLogger(__name__)
Passages = Sequence[Chunk | ScoredChunk]
R = TypeVar("R")
_LOAD = threading.Lock()  # one model load at a time, so threads sharing a Generator load it once


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


class Generator:
    """Answers a question from passages with a causal LM from the model registry.

    ``__init__`` is light; the model loads in ``warm_up()`` (called on first use). ``cuda_graphs`` (default True):
    batched decoding (:meth:`generate_batch`, :meth:`decode_batch`) on CUDA captures its step once as a CUDA graph
    and replays it.
    """

    def __init__(self, model: str = DEFAULT_GENERATOR, device: str | None = None, dtype: str | None = None) -> None:
        self.model_name, self.device, self.dtype = model, device, dtype
        self.model: PreTrainedModel | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.eos_ids: set[int] = set()
        # batched decoding on CUDA replays its steps as a CUDA graph (see _BatchedCache); False runs them eagerly
        self.cuda_graphs = True

    @classmethod
    def from_model(
        cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None = None, name: str = "custom"
    ) -> Generator:
        """Wrap an already loaded model (e.g. a random-initialised one in a benchmark). Without a tokenizer,
        prompts must be given as ``Prompt`` objects, there is no end-of-sequence stop and the text is empty. As
        loading one by name does, a model on SDPA attention decodes masked steps with grouped products
        (:func:`ragcore.cache.use_grouped_decode`) and a model on CUDA turns cuDNN's attention off
        (:func:`ragcore.cache.cudnn_sdpa_off`)."""
        g = cls(name)
        g.model, g.tokenizer = model.eval(), tokenizer
        kvcache.use_grouped_decode(model)
        if model.device.type == "cuda":
            kvcache.cudnn_sdpa_off()
        g.eos_ids = _eos_ids(g.model, tokenizer)
        return g

    def warm_up(self) -> None:
        """Load the model and tokenizer (once; safe to call from several threads)."""
        if self.model is None:
            with _LOAD:
                if self.model is None:
                    model, tokenizer = load_generator(self.model_name, self.device, self.dtype)
                    self.tokenizer, self.eos_ids = tokenizer, _eos_ids(model, tokenizer)
                    self.model = model  # last: other threads take a set model as a loaded generator

    def prompt(
        self,
        question: str,
        passages: Sequence[Chunk | ScoredChunk] | None = None,
        system: str | None = None,
        answer_prefix: str | None = None,
    ) -> Prompt:
        """The chat-formatted prompt (:func:`ragcore.prompt.build_prompt`)."""
        self.warm_up()
        return build_prompt(self.tokenizer, question, passages, system, answer_prefix)

    def prompts(
        self, requests: Sequence[tuple[str, Sequence[Chunk | ScoredChunk] | None, str | None, str | None]]
    ) -> list[Prompt]:
        """Several prompts, each ``(question, passages, system, answer_prefix)`` as :meth:`prompt` takes them,
        tokenised as one batch (:func:`ragcore.prompt.build_prompts`); the same prompts as :meth:`prompt` one by one.
        The tracers rebuild their subsampled prompts through it: a subclass that changes :meth:`prompt` must change
        this too."""
        self.warm_up()
        return build_prompts(self.tokenizer, requests)

    @property
    def context_window(self) -> int:
        """Tokens the model reads at most (prompt and answer together), from its config."""
        self.warm_up()
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 2048)

    def fit_prompt(
        self,
        question: str,
        passages: Sequence[Chunk | ScoredChunk],
        max_new_tokens: int,
        max_tokens: int | None = None,
        system: str | None = None,
        priority: Sequence[int] | None = None,
    ) -> tuple[Prompt, list[Chunk | ScoredChunk]]:
        """The prompt with as many ``passages`` as fit, with ``max_new_tokens`` left for the answer, in the model's
        window (or ``max_tokens``, if smaller); returns it and the passages it holds, in their given order.

        Which passages stay: the leading ones, or with ``priority`` (indices into ``passages``, the most important
        first: e.g. by retrieval rank after a reranker moved the best passage last) the most important ones.
        Raises ``PromptTooLongError`` when not even the most important passage fits (or the question, without
        passages); ``ConfigError`` when ``priority`` is not a permutation of the passages' indices."""
        window = self.context_window
        limit = window if max_tokens is None else min(max_tokens, window)
        budget = limit - max_new_tokens
        passages = list(passages)
        order = list(range(len(passages))) if priority is None else [int(i) for i in priority]
        if sorted(order) != list(range(len(passages))):
            raise ConfigError(
                f"priority must order the {len(passages)} passages' indices, got {list(priority or [])!r}"
            )

        def first(n: int) -> list[Chunk | ScoredChunk]:  # the n most important, in their given order
            return [passages[i] for i in sorted(order[:n])]

        p = self.prompt(question, passages, system)
        if len(p) <= budget:
            return p, passages
        lo, hi, best = 1, len(passages) - 1, None  # the most passages that fit
        while lo <= hi:
            mid = (lo + hi) // 2
            q = self.prompt(question, first(mid), system)
            if len(q) <= budget:
                best, lo = (q, mid), mid + 1
            else:
                hi = mid - 1
        if best is None:
            one = self.prompt(question, first(1), system) if passages else p
            which = "first" if priority is None else "most important"
            raise PromptTooLongError(
                f"the question{f' and its {which} passage' if passages else ''} take {len(one)} tokens; "
                f"{self.model_name!r} reads {limit} tokens, {max_new_tokens} of them kept for the answer"
            )
        logger.warning(
            "%d of %d passages do not fit %s's window of %d tokens and are left out",
            len(passages) - best[1],
            len(passages),
            self.model_name,
            limit,
        )
        return best[0], first(best[1])

    def generate(
        self,
        question: str | Prompt,
        passages: Sequence[Chunk | ScoredChunk] | None = None,
        config: GenerationConfig | None = None,
        compressor: KVCompressor | str | None = None,
        query_aware: bool = False,
    ) -> Generation:
        """Generate an answer; ``question`` may be a ready ``Prompt``.

        ``compressor`` (a KV compressor or its spec string, e.g. ``"kvzip(ratio=0.5)"``) compresses the KV cache
        after prefill. By default (question-agnostic) only the prompt
        before the ``question`` span is prefilled under compression, so the compressed context does not depend
        on the question; the question tokens are then fed on the compressed cache. ``query_aware=True``
        prefills the whole prompt under compression. ``Generation.stats`` gets ``kv_bytes`` (held after
        prefill), ``kv_bytes_full`` (an uncompressed cache of the same prompt), ``masks_only`` and, with a
        compressor, ``kv_report``.
        """
        return _drain(self._decode(question, passages, config, compressor=compressor, query_aware=query_aware))

    def stream(
        self,
        question: str | Prompt,
        passages: Sequence[Chunk | ScoredChunk] | None = None,
        config: GenerationConfig | None = None,
        **options: Any,
    ) -> Generator_[str, None, Generation]:
        """Yield the answer as text pieces, token by token (pieces are decoded so multi-byte text stays whole).

        ``options``: ``config``, ``compressor`` and ``query_aware``, as in :meth:`generate`. The generator's return
        value (``StopIteration.value``, or ``g = yield from gen.stream(...)``) is the ``Generation``."""
        self.warm_up()
        ids: list[int] = []
        shown = ""
        tokens = self._decode(question, passages, config, **options)
        while True:
            try:
                tok = next(tokens)
            except StopIteration as done:
                return done.value
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
        compressor: KVCompressor | str | None = None,
        query_aware: bool = False,
    ) -> list[Generation]:
        """Generate for several ready prompts: each is prefilled (and compressed) on its own, as
        :meth:`generate` does, then all decode together as one batch, their caches left-padded to a common
        length and the padding masked (per layer and head, so head-wise budgets stay enforced).

        Greedy answers equal :meth:`generate`'s in float32; in bfloat16 (the default on CUDA) the batch's
        attention rounds differently and can change a token now and then. Sampled ones draw from one generator
        for the batch, so they differ from one-by-one sampling with the same seed. ``prefill_s`` is each prompt's
        own; ``decode_s`` is the batch's decoding time until that row stopped; ``config.max_time`` counts from
        this call's start."""
        started = time.perf_counter()  # max_time counts from here, as generate() counts from its prefill
        self.warm_up()
        cfg = config or GenerationConfig()
        if not prompts:
            return []
        for p in prompts:
            if not isinstance(p, Prompt):
                raise ConfigError(f"generate_batch takes ready Prompt objects, got {type(p).__name__!r}")
        dev = self.model.device
        gen = torch.Generator(device=dev)
        if cfg.seed is not None:
            gen.manual_seed(cfg.seed)
        caches, masks, firsts, stats, prefill_s = [], [], [], [], []
        for p in prompts:
            with contextlib.ExitStack() as hooks:
                t0 = time.perf_counter()
                cache, logits, st, call = self._prefill(p, compressor, query_aware, hooks)
                masks.append(call.head_masks() if call is not None else {})
                _sync(dev)
                prefill_s.append(time.perf_counter() - t0)
            caches.append(cache)
            firsts.append(logits)
            stats.append(st)
        rows = list(zip(caches, masks))
        caches.clear()  # the batch cache holds copies: let the single-row caches go
        return self.decode_batch(prompts, rows, firsts, stats, prefill_s, cfg, gen, started)

    @torch.inference_mode()
    def decode_batch(
        self,
        prompts: Sequence[Prompt],
        rows: list[tuple[Any, dict[int, torch.Tensor]]],
        logits: Sequence[torch.Tensor],
        stats: Sequence[dict[str, Any]],
        prefill_s: Sequence[float],
        config: GenerationConfig | None = None,
        gen: torch.Generator | None = None,
        started: float | None = None,
    ) -> list[Generation]:
        """Decode several prompts together from their prefilled single-row caches, as :meth:`generate_batch` does.

        ``rows``: per prompt, its cache (holding every prompt token, possibly compressed) and its per-layer
        (1, H_kv, S) head visibility (empty: all visible); the list is emptied once the left-padded batch cache
        holds copies of them. ``logits``: per prompt, the (1, V) next-token logits after its last token;
        ``stats`` and ``prefill_s`` go to each :class:`Generation`. ``gen``: the sampling generator (default: one
        seeded from ``config.seed``). ``started``: the ``time.perf_counter()`` that ``config.max_time`` counts from
        (default: this call's start; :meth:`generate_batch` passes its own, before the prefills). The rows are
        copied into a batch cache with room for the answers, written in place (``ragcore.cache.slot_cache``); on
        CUDA the decoding step is replayed as a CUDA graph (``cuda_graphs``). Greedy answers equal one-by-one
        decoding's in float32; in bfloat16 the batch's attention rounds differently and can change a token now
        and then."""
        started = time.perf_counter() if started is None else started
        self.warm_up()
        cfg = config or GenerationConfig()
        batched = _BatchedCache.from_rows(self.model, list(rows), cfg.max_new_tokens, self.cuda_graphs)
        if isinstance(rows, list):
            rows.clear()
        with batched:
            return self._decode_rows(prompts, batched, torch.cat(list(logits)), stats, prefill_s, cfg, gen, started)

    @torch.inference_mode()
    def decode_shared(
        self,
        prompts: Sequence[Prompt],
        context: Sequence[tuple[torch.Tensor, torch.Tensor]],
        masks: dict[int, torch.Tensor],
        start: int,
        stats: Sequence[dict[str, Any]],
        config: GenerationConfig | None = None,
    ) -> list[Generation]:
        """Answer several prompts that share their first ``start`` tokens, held (possibly compressed) in
        ``context``: per layer, (1, H_kv, S, D) keys and values, with ``masks`` the per-layer (1, H_kv, S) head
        visibility (empty: all visible). The context is copied once into a batch cache with room for every
        prompt's remaining tokens and answer; those tokens are fed in one model call, left-padded (the padding
        hidden), at their absolute positions; then the answers decode together as :meth:`decode_batch` does.
        Greedy answers equal :meth:`decode_on`'s one by one in float32 (in bfloat16 the batch's attention rounds
        differently and can change a token now and then). ``prefill_s`` of each :class:`Generation` is the one
        feed's time; ``stats`` go to each; ``config.max_time`` counts from this call's start."""
        started = time.perf_counter()
        self.warm_up()
        cfg = config or GenerationConfig()
        dev = self.model.device
        tails = [p.input_ids[0, start:] for p in prompts]
        if not tails or any(len(t) == 0 for t in tails):
            raise ConfigError(f"decode_shared needs prompts with tokens after the shared {start}")
        q = max(len(t) for t in tails)
        pad_id = getattr(self.tokenizer, "pad_token_id", None) or 0
        ids = torch.full((len(tails), q), pad_id, dtype=torch.long)
        pos = torch.full((len(tails), q), start, dtype=torch.long)
        real = torch.zeros(len(tails), q, dtype=torch.bool)  # the question's columns; the padding stays hidden
        for i, t in enumerate(tails):
            ids[i, q - len(t) :] = t
            pos[i, q - len(t) :] = torch.arange(start, start + len(t))
            real[i, q - len(t) :] = True
        batched = _BatchedCache.shared(self.model, context, masks, len(tails), q + cfg.max_new_tokens, self.cuda_graphs)
        with batched:
            t0 = time.perf_counter()
            logits = batched.feed(ids.to(dev), pos.to(dev), real.to(dev))
            _sync(dev)
            feed_s = time.perf_counter() - t0
            return self._decode_rows(prompts, batched, logits, stats, [feed_s] * len(tails), cfg, None, started)

    def _decode_rows(
        self,
        prompts: Sequence[Prompt],
        cache: _BatchedCache,
        logits: torch.Tensor,
        stats: Sequence[dict[str, Any]],
        prefill_s: Sequence[float],
        cfg: GenerationConfig,
        gen: torch.Generator | None,
        started: float,
    ) -> list[Generation]:
        """The batched decoding loop on an entered ``cache``, from the (B, V) next-token ``logits``;
        ``cfg.max_time`` counts from ``started``."""
        dev = self.model.device
        if gen is None:
            gen = torch.Generator(device=dev)
            if cfg.seed is not None:
                gen.manual_seed(cfg.seed)
        t1 = time.perf_counter()
        b = len(prompts)
        outs: list[list[int]] = [[] for _ in range(b)]
        stopped = ["max_new_tokens"] * b
        done_at = [0.0] * b
        live = list(range(b))
        n = torch.tensor([len(p) for p in prompts], device=dev)
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
            out_of_time = cfg.max_time is not None and time.perf_counter() - started > cfg.max_time
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

    def prefill_context(
        self,
        passages: Sequence[Chunk | ScoredChunk],
        compressor: KVCompressor | str | None = None,
        system: str | None = None,
        ratio: float | None = None,
    ) -> CompressedContext:
        """Prefill the prompt's context (instruction and ``passages``, everything before the question) once,
        compressing it question-agnostic with ``compressor`` (a stage or spec string; default
        ``compress.kv.DEFAULT_AGNOSTIC`` at ``ratio``), and return the :class:`ragcore.context_cache.CompressedContext`
        that answers any number of questions from it (see :func:`ragcore.context_cache.prefill_context`)."""
        from ragcore.context_cache import prefill_context

        return prefill_context(self, passages, compressor, system, ratio)

    @torch.inference_mode()
    def decode_on(
        self,
        cache: Any,
        prompt: Prompt,
        start: int,
        config: GenerationConfig | None = None,
        masks: dict[int, torch.Tensor] | None = None,
    ) -> Generation:
        """Answer ``prompt`` on a ``cache`` that already holds (possibly compressed) its first ``start`` tokens:
        feed the rest at their absolute positions, then decode as :meth:`generate` does. ``masks``: per layer,
        the (B, H_kv, S) per-head visibility of the cache's first slots (an uneven compression), passed to
        attention through the cache adapter's mask hook. ``cache`` grows by the tokens fed."""
        self.warm_up()
        cfg = config or GenerationConfig()
        model, dev = self.model, self.model.device
        n = len(prompt)
        gen = torch.Generator(device=dev)
        if cfg.seed is not None:
            gen.manual_seed(cfg.seed)
        masks = masks or {}

        def visible(module: Any, c: Any) -> torch.Tensor | None:
            return masks.get(module.layer_idx) if c is cache else None

        with kvcache.attention_hooks(model, pre=kvcache.head_mask_hook(visible)):
            t0 = time.perf_counter()
            logits = kvcache.feed(model, prompt.input_ids[:, start:].to(dev), cache, start)
            _sync(dev)
            t1 = time.perf_counter()

            def step(tok: int, i: int) -> torch.Tensor:
                return kvcache.feed(model, torch.tensor([[tok]], device=dev), cache, n + i)

            out, stopped = _drain(self._loop(logits, cfg, gen, t0, step))
        _sync(dev)
        t2 = time.perf_counter()
        text = self.tokenizer.decode(out, skip_special_tokens=True).strip() if self.tokenizer else ""
        return Generation(text, out, n, t1 - t0, t2 - t1, stopped, {"kv_bytes": kvcache.kv_bytes(cache)})

    @torch.inference_mode()
    def feed_on(
        self, cache: Any, prompt: Prompt, start: int, masks: dict[int, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Feed the tokens of ``prompt`` from ``start`` on at their absolute positions to a ``cache`` that holds
        (possibly compressed) its first ``start`` tokens, under the per-layer (B, H_kv, S) head visibility
        ``masks``, as :meth:`decode_on` does before decoding; the next-token logits (1, V). ``cache`` grows by
        the tokens fed."""
        self.warm_up()
        model, masks = self.model, masks or {}

        def visible(module: Any, c: Any) -> torch.Tensor | None:
            return masks.get(module.layer_idx) if c is cache else None

        with kvcache.attention_hooks(model, pre=kvcache.head_mask_hook(visible)):
            return kvcache.feed(model, prompt.input_ids[:, start:].to(model.device), cache, start)

    def _loop(
        self,
        logits: torch.Tensor,
        cfg: GenerationConfig,
        gen: torch.Generator,
        t0: float,
        step: Callable[[int, int], torch.Tensor],
    ) -> Generator_[int, None, tuple[list[int], str]]:
        """Pick tokens from ``logits`` (1, V) and feed each back with ``step(token, i)`` until an end-of-sequence
        token, ``max_new_tokens`` or ``max_time`` (counted from ``t0``); yields each token, returns (tokens, why)."""
        out: list[int] = []
        for i in range(cfg.max_new_tokens):
            tok = _pick(logits[0].float(), cfg, gen)
            if tok in self.eos_ids:
                return out, "eos"
            out.append(tok)
            yield tok
            if cfg.max_time is not None and time.perf_counter() - t0 > cfg.max_time:
                return out, "max_time"
            if i + 1 == cfg.max_new_tokens:
                break
            logits = step(tok, i)
        return out, "max_new_tokens"

    def _prefill(
        self, prompt: Prompt, compressor: KVCompressor | str | None, query_aware: bool, hooks: contextlib.ExitStack
    ) -> tuple[Any, torch.Tensor, dict[str, Any], Any]:
        """Prefill ``prompt`` (compressing with ``compressor``, whose hooks join ``hooks``): the cache, the
        next-token logits (1, V), the cache statistics and the compressor's call (None without one)."""
        compressor = kv_compressor(compressor)
        model = self.model
        dev = model.device
        ids = prompt.input_ids.to(dev)
        n = ids.shape[1]
        cache = kvcache.new_cache(model.config)
        call = None
        stats: dict[str, Any] = {}
        if compressor is None:
            logits = kvcache.call(model, cache, input_ids=ids, use_cache=True, logits_to_keep=1).logits[:, -1]
        else:
            t0 = time.perf_counter()
            call = hooks.enter_context(compressor.apply(model, cache, prompt))
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
        stats["masks_only"] = bool(call.report.masks_only) if call is not None else False
        if call is not None:
            stats["kv_report"] = call.report.to_dict()
        return cache, logits, stats, call

    @torch.inference_mode()
    def _decode(
        self, question: str | Prompt, passages: Passages | None, config: GenerationConfig | None = None, **kv: Any
    ) -> Generator_[int, None, Generation]:
        """The decode loop: yields token ids, returns the Generation (``kv``: ``compressor``, ``query_aware``)."""
        cfg = config or GenerationConfig()
        compressor, query_aware = kv.get("compressor"), kv.get("query_aware", False)
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
            cache, logits, stats, _ = self._prefill(prompt, compressor, query_aware, hooks)
            _sync(dev)
            t1 = time.perf_counter()

            def step(tok: int, i: int) -> torch.Tensor:
                if compressor is not None:  # a compressed cache is shorter than the absolute position
                    return kvcache.feed(model, torch.tensor([[tok]], device=dev), cache, n + i)
                pos = torch.tensor([[n + i]], device=dev)
                return kvcache.call(
                    model,
                    cache,
                    input_ids=torch.tensor([[tok]], device=dev),
                    position_ids=pos,
                    cache_position=pos[0],
                    use_cache=True,
                ).logits[:, -1]

            out, stopped = yield from self._loop(logits, cfg, gen, t0, step)
        _sync(dev)
        t2 = time.perf_counter()
        text = self.tokenizer.decode(out, skip_special_tokens=True).strip() if self.tokenizer else ""
        return Generation(text, out, n, t1 - t0, t2 - t1, stopped, stats)


def kv_compressor(compressor: Any) -> Any:
    """A KV compressor as :meth:`Generator.generate` takes it: an instance as it is, a spec string built by the
    ``kv_compressor`` registry (``"kvzip(ratio=0.5)"``; without a ratio nothing is removed), None for none.
    Raises ``ConfigError`` for a bad spec or anything else."""
    if isinstance(compressor, str):
        return registry("kv_compressor").build(compressor)
    if compressor is None or hasattr(compressor, "apply"):
        return compressor
    raise ConfigError(
        f"compressor must be a KV compressor or its spec string, got {type(compressor).__name__} {compressor!r}",
        param="compressor",
    )


def _drain(steps: Generator_[int, None, R]) -> R:
    """Run a generator to its end; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


class _BatchedCache:
    """Several rows' caches as one batch cache whose buffers have room for the tokens still to come
    (:func:`ragcore.cache.slot_cache`): a step writes its slot in place instead of copying every layer. Built from
    single-row caches (:meth:`from_rows`: possibly compressed to different lengths per layer, possibly with
    per-head masks, left-padded to a common length) or from one context shared by every row (:meth:`shared`).
    Inside the ``with`` block a pre-hook on every attention layer marks the slots being written visible and passes
    the layer's visibility as the attention mask (per key/value head to grouped decoding, per query head
    otherwise), so padding, masked slots and unwritten room stay hidden; the hooks are removed when the block ends.

    On CUDA the step after the first is captured once as a CUDA graph and replayed (``graphs``): a small model's
    decoding step is bound by the host launching its few hundred kernels, not by the GPU. The captured hooks, slot
    writes and masks replay with it, at the next slot each time. A capture that fails (an operation a graph cannot
    hold) is logged and the steps run eagerly."""

    def __init__(
        self, model: PreTrainedModel, layers: list[tuple[torch.Tensor, torch.Tensor, int]], visible: list, graphs: bool
    ):
        self.model = model
        self.cache = kvcache.slot_cache(model.config, layers)
        self.visible = visible  # per layer (B, H_kv, C): the slots each row's heads may see
        self.cache_position = torch.tensor(
            [0], device=model.device
        )  # unused by the slot layers; transformers wants one
        self.graphs = graphs and model.device.type == "cuda"
        self._graph: Any = None
        self._feed: tuple[torch.Tensor, list[int]] | None = None  # during feed(): the (B, q) real columns, widths
        self._hooks = contextlib.ExitStack()

    @classmethod
    def from_rows(
        cls, model: PreTrainedModel, rows: list[tuple[Any, dict[int, torch.Tensor]]], max_new: int, graphs: bool
    ) -> _BatchedCache:
        """From single-row caches and their per-layer (1, H_kv, S) head visibility, left-padded."""
        layers, visible = [], []
        for li in range(kvcache.n_layers(rows[0][0])):
            kv = [kvcache.get_kv(c, li) for c, _ in rows]
            width = max(k.shape[-2] for k, _ in kv)
            keys, values, vis = _buffers(kv[0], len(rows), width + max_new)
            for i, ((k, v), (_, masks)) in enumerate(zip(kv, rows)):
                pad = width - k.shape[-2]
                keys[i, :, pad:width], values[i, :, pad:width] = k[0], v[0]
                vis[i, :, pad:width] = True
                if li in masks:  # head-wise budgets: the compressor's slots beyond a head's budget stay hidden
                    m = masks[li][0]
                    vis[i, :, pad : pad + m.shape[-1]] = m
            layers.append((keys, values, width))
            visible.append(vis)
        return cls(model, layers, visible, graphs)

    @classmethod
    def shared(
        cls,
        model: PreTrainedModel,
        context: Sequence[tuple[torch.Tensor, torch.Tensor]],
        masks: dict[int, torch.Tensor],
        b: int,
        room: int,
        graphs: bool,
    ) -> _BatchedCache:
        """``b`` rows of one context (per layer (1, H_kv, S, D) keys and values, ``masks`` its (1, H_kv, S) head
        visibility), each with ``room`` slots after it."""
        layers, visible = [], []
        dev = model.device
        for li, (k, v) in enumerate(context):
            k, v = k.to(dev), v.to(dev)
            width = k.shape[-2]
            keys, values, vis = _buffers((k, v), b, width + room)
            keys[:, :, :width], values[:, :, :width] = k, v  # one copy per layer, broadcast over the rows
            vis[:, :, :width] = True
            if li in masks:  # head-wise budgets: the compressor's slots beyond a head's budget stay hidden
                m = masks[li].to(dev)
                vis[:, :, : m.shape[-1]] = m
            layers.append((keys, values, width))
            visible.append(vis)
        return cls(model, layers, visible, graphs)

    def feed(self, ids: torch.Tensor, positions: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Feed (B, q) tokens at absolute ``positions`` (B, q) into the slots after every layer's written ones;
        ``real`` (B, q) says which are tokens, not padding (hidden from every row). The next-token logits (B, V)
        after the last column."""
        li_width = [int(kvcache.slots_filled(self.cache, li)) for li in range(len(self.visible))]
        self._feed = (real, li_width)
        try:
            return kvcache.call(
                self.model,
                self.cache,
                input_ids=ids,
                position_ids=positions,
                cache_position=torch.arange(ids.shape[1], device=ids.device),
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1]
        finally:
            self._feed = None

    def __enter__(self) -> _BatchedCache:
        self._hooks.enter_context(kvcache.attention_hooks(self.model, pre=self._pre))
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.close()
        self._graph = None

    def _pre(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if kvcache.from_call(kwargs) is not self.cache:
            return None
        li = module.layer_idx
        vis = self.visible[li]
        impl = getattr(module.config, "_attn_implementation", "sdpa")
        if self._feed is not None:  # several columns: the real ones become visible, each sees those before it
            real, widths = self._feed
            w, q = widths[li], real.shape[1]
            vis[:, :, w : w + q] = real[:, None]
            slots = torch.arange(vis.shape[-1], device=vis.device)
            mask = vis[:, :, None, :] & (slots[None, :] <= w + torch.arange(q, device=vis.device)[:, None])
        else:
            vis.index_fill_(2, kvcache.slots_filled(self.cache, li), True)  # the slot this step writes
            mask = vis[:, :, None]  # (B, H_kv, 1, C)
        grouped = impl == kvcache.ATTN_IMPLEMENTATION and vis.device.type in kvcache.GROUPED_DECODE
        if mask.shape[2] > 1 or not grouped:  # grouped decoding reads one row per key/value head; others per head
            mask = mask.repeat_interleave(module.config.num_attention_heads // vis.shape[1], dim=1)  # (B, H, q, C)
            if impl == "eager":
                dtype = kwargs.get("hidden_states", args[0] if args else None).dtype
                mask = torch.zeros(mask.shape, dtype=dtype, device=vis.device).masked_fill(
                    ~mask, torch.finfo(dtype).min
                )
        return args, {**kwargs, "attention_mask": mask}

    def _forward(self, toks: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return kvcache.call(
            self.model,
            self.cache,
            input_ids=toks,
            position_ids=positions[:, None],
            cache_position=self.cache_position,
            use_cache=True,
        ).logits[:, -1]

    def step(self, toks: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (B, 1) at absolute ``positions`` (B,); the next-token logits (B, V)."""
        if self._graph is not None:
            self._toks.copy_(toks)
            self._pos.copy_(positions)
            self._graph.replay()
            return self._out
        if not self.graphs:
            return self._forward(toks, positions)
        side = torch.cuda.Stream()  # the first step runs eagerly on a side stream (a graph's warm-up), then the
        side.wait_stream(torch.cuda.current_stream())  # next ones are captured
        with torch.cuda.stream(side):
            out = self._forward(toks, positions)
        torch.cuda.current_stream().wait_stream(side)
        self._toks, self._pos = toks.clone(), positions.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: other threads' CUDA calls (another request decoding on the same GPU) stay legal
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._out = self._forward(self._toks, self._pos)
        except RuntimeError as e:  # nothing ran: the steps go on eagerly
            logger.warning("decoding steps run without a CUDA graph: the capture failed (%s)", e)
            self.graphs = False
        else:
            self._graph = graph
        return out


def _buffers(kv: tuple[torch.Tensor, torch.Tensor], b: int, slots: int) -> tuple[torch.Tensor, ...]:
    """Zeroed (b, H_kv, C, D) key and value buffers like ``kv``'s and a (b, H_kv, C) visibility, all hidden, with
    ``C`` = ``slots`` rounded up to a multiple of 8 (cuBLAS's fast kernels want one)."""
    k, v = kv
    c = -(-slots // 8) * 8
    return (
        k.new_zeros(b, k.shape[1], c, k.shape[-1]),
        v.new_zeros(b, v.shape[1], c, v.shape[-1]),
        torch.zeros(b, k.shape[1], c, dtype=torch.bool, device=k.device),
    )


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None) -> set[int]:
    """Token ids that end a generation (none without a tokenizer)."""
    if tokenizer is None:
        return set()
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None:
        eos.append(tokenizer.eos_token_id)
    return set(eos)


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
