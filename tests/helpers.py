"""What several test modules share: tiny random-init models, random prompts, the small corpus and questions."""

from __future__ import annotations

import torch
import transformers

from ragcore.generator import Generator
from ragcore.prompt import Prompt
from ragcore.types import Chunk

PASSAGES = [
    Chunk("The Eiffel Tower was completed in 1889 for the World's Fair in Paris.", "eiffel"),
    Chunk("Bananas are yellow fruit.", "bananas"),
]
QUESTION = "When was the Eiffel Tower completed?"
T, Q = 64, 8  # context and question tokens of the synthetic prompts


def tiny_model(
    kind: str = "llama", layers: int = 2, vocab: int = 256, hidden: int = 64
) -> transformers.PreTrainedModel:
    """A random-init decoder (``llama`` or ``qwen2``), 4 query heads in 2 key/value groups, seeded."""
    torch.manual_seed(0)
    kw = dict(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=512,
    )
    cfg = transformers.LlamaConfig(**kw) if kind == "llama" else transformers.Qwen2Config(**kw)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    model.config._attn_implementation = "sdpa"
    return model


def random_ids(n: int = T + Q, seed: int = 1, vocab: int = 256) -> torch.Tensor:
    return torch.randint(3, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def random_prompt(t: int = T, q: int = Q, seed: int | None = None) -> Prompt:
    """A prompt of ``t`` context and ``q`` question tokens (its ``question`` span set)."""
    return Prompt("", random_ids(t + q, seed=t if seed is None else seed), {"question": (t, t + q)})


def tiny_generator(model: transformers.PreTrainedModel, tokenizer=None) -> Generator:
    return Generator.from_model(model, tokenizer, name="tiny")


def hooks_left(model: transformers.PreTrainedModel) -> int:
    """ragcore's forward hooks and pre-hooks left on the attention modules (transformers may keep output-capturing
    hooks of its own there once hidden states or attentions were asked for)."""
    inner = getattr(model, "model", model)
    hooks = [
        h
        for ly in inner.layers
        for d in (ly.self_attn._forward_hooks, ly.self_attn._forward_pre_hooks)
        for h in d.values()
    ]
    return sum(getattr(h, "__module__", "").split(".")[0] in ("ragcore", "compress") for h in hooks)
