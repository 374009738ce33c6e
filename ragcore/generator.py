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
    def _decode(
        self,
        question: str | Prompt,
        passages: Sequence[Chunk | ScoredChunk] | None,
        cfg: GenerationConfig,
        on_prefill: PrefillHook | None,
        compressor: KVCompressor | None = None,
        query_aware: bool = False,
    ) -> Generator_[int, None, Generation]:
        from transformers import DynamicCache

        self.warm_up()
        prompt = question if isinstance(question, Prompt) else self.prompt(question, passages)
        model = self.model
        dev = model.device
        ids = prompt.input_ids.to(dev)
        n = ids.shape[1]
        gen = torch.Generator(device=dev)
        if cfg.seed is not None:
            gen.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        cache = DynamicCache(config=model.config)
        with contextlib.ExitStack() as hooks:  # the compressor's hooks live until decoding ends, then go
            report = None
            if compressor is None:
                logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
            else:
                report = hooks.enter_context(compressor.apply(model))
                split = n if query_aware else _question_start(prompt)
                logits = model(input_ids=ids[:, :split], past_key_values=cache, use_cache=True, logits_to_keep=1)
                logits = logits.logits[:, -1]
                if split < n:  # the question, on the compressed cache, at its absolute positions
                    logits = _step(model, ids[:, split:], cache, split)
            stats: dict[str, Any] = {
                "kv_bytes": kvcache.kv_bytes(cache),
                "kv_bytes_full": kvcache.bytes_per_token(cache) * n,
                "masks_only": bool(report.masks_only) if report is not None else False,
            }
            if report is not None:
                stats["kv_report"] = report.to_dict()
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
                    logits = _step(model, torch.tensor([[tok]], device=dev), cache, n + step)
                    continue
                pos = torch.tensor([[n + step]], device=dev)
                logits = model(
                    input_ids=torch.tensor([[tok]], device=dev),
                    past_key_values=cache,
                    position_ids=pos,
                    cache_position=pos[0],
                    use_cache=True,
                ).logits[:, -1]
        _sync(dev)
        t2 = time.perf_counter()
        text = self.tokenizer.decode(out, skip_special_tokens=True).strip() if self.tokenizer else ""
        return Generation(text, out, n, t1 - t0, t2 - t1, stopped, stats)


def _question_start(prompt: Prompt) -> int:
    """Where the question starts: the compressed context is everything before it (all of it if unknown)."""
    n = len(prompt)
    start = prompt.spans.get("question", (n, n))[0]
    return start if 1 < start < n else n


def _step(model: PreTrainedModel, ids: torch.Tensor, cache: Any, first_pos: int) -> torch.Tensor:
    """Feed ``ids`` (1, q) on a possibly compressed cache: rotary positions are absolute (``first_pos`` on),
    cache slots follow the cache's own length (shorter than the absolute position after pruning)."""
    q = ids.shape[1]
    slot = kvcache.seq_len(cache, 0)
    pos = torch.arange(first_pos, first_pos + q, device=ids.device)[None]
    return model(
        input_ids=ids,
        past_key_values=cache,
        position_ids=pos,
        cache_position=torch.arange(slot, slot + q, device=ids.device),
        use_cache=True,
        logits_to_keep=1,
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
