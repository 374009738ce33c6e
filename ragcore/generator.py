"""The generator: a Hugging Face causal LM with a chat prompt, greedy or sampled decoding and streaming.

Decoding is a plain loop over the model (prefill once, then one token at a time on the KV cache), so that
later stages can act between prefill and decoding (KV-cache compression) and read the cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ragcore.errors import ConfigError
from ragcore.models import DEFAULT_GENERATOR, load_generator
from ragcore.prompt import Prompt, build_prompt
from ragcore.types import Chunk, ScoredChunk

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

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

    def warm_up(self) -> None:
        if self.model is None:
            self.model, self.tokenizer = load_generator(self.model_name, self.device, self.dtype)
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
    ) -> Generation:
        """Generate an answer; ``question`` may be a ready ``Prompt``."""
        out: list[int] = []
        stream = self._decode(question, passages, config or GenerationConfig(), on_prefill)
        for tok in stream:
            out.append(tok)
        return self._last

    def stream(
        self,
        question: str | Prompt,
        passages: Sequence[Chunk | ScoredChunk] | None = None,
        config: GenerationConfig | None = None,
        on_prefill: PrefillHook | None = None,
    ) -> Iterator[str]:
        """Yield the answer as text pieces, token by token (pieces are decoded so multi-byte text stays whole)."""
        self.warm_up()
        ids: list[int] = []
        shown = ""
        for tok in self._decode(question, passages, config or GenerationConfig(), on_prefill):
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
    ) -> Iterator[int]:
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
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        stats = on_prefill(model, cache, prompt) if on_prefill else {}
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
        text = self.tokenizer.decode(out, skip_special_tokens=True).strip()
        self._last = Generation(text, out, n, t1 - t0, t2 - t1, stopped, dict(stats or {}))


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
