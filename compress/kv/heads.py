"""Retrieval heads: which key/value heads copy tokens out of the context, measured two ways, and their file format.

* :func:`induction_scores` (RazorAttention's calibration, https://arxiv.org/abs/2407.15891): a random token sequence
  repeated twice; a head whose queries in the second copy attend to the token just after the previous occurrence
  (induction) or to the previous occurrence itself (copying) scores high. Needs no data.
* :func:`copy_scores` (Wu et al., 2024, "Retrieval head mechanistically explains long-context factuality",
  https://arxiv.org/abs/2404.15574): the model answers real questions with the full cache; on the answers it got
  right, each answer token's producing query row is read through ``ragcore.attention``, and a head's score is the
  attention mass that row puts on the prompt tokens equal to the token being produced, averaged over such rows and
  over each key/value group.

Head-score files (``retrieval_heads(scores=PATH)``) are JSON::

    {"format": "ragcore-head-scores", "version": 1, "model": NAME, "scores": [[layer 0 kv heads], ...], ...}

Files written before the format had a name (no ``format`` key, the same ``scores``) are read as version 0.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compress.kv.base import group_mean
from ragcore.attention import attention_to_spans, decoder_layers, head_counts
from ragcore.errors import ConfigError
from ragcore.generator import GenerationConfig

if TYPE_CHECKING:
    from ragcore.generator import Generation, Generator
    from ragcore.prompt import Prompt

logger = logging.getLogger(__name__)

FORMAT = "ragcore-head-scores"
VERSION = 1


@dataclass
class HeadScores:
    """Scores (L, H_kv) of every key/value head of a model; higher = more of a retrieval head."""

    scores: torch.Tensor
    model: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def top(self, top_frac: float) -> dict[int, list[int]]:
        """The best ``top_frac`` of (layer, key/value head) pairs as ``{layer: [kv head, ...]}``."""
        n_kv = self.scores.shape[1]
        n_pick = round(top_frac * self.scores.numel())
        heads: dict[int, list[int]] = {}
        for f in torch.topk(self.scores.flatten(), n_pick).indices.tolist() if n_pick else []:
            heads.setdefault(f // n_kv, []).append(f % n_kv)
        return {k: sorted(v) for k, v in sorted(heads.items())}

    def save(self, path: str | Path) -> Path:
        """Write the JSON file (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            **self.meta,
            "scores": [[round(float(v), 6) for v in layer] for layer in self.scores],
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path, shape: tuple[int, int] | None = None) -> HeadScores:
        """Read a head-score file; ``shape`` (layers, kv heads) checks it against a model. Raises ``ConfigError``."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if data.get("format", FORMAT) != FORMAT or int(data.get("version", 0)) > VERSION:
                raise ValueError(f"format {data.get('format')!r} version {data.get('version')!r}")
            scores = torch.tensor(data["scores"], dtype=torch.float32)
        except FileNotFoundError:
            raise ConfigError(
                f"no head-score file at {str(path)!r} (write one with python -m bench.kv_heads)"
            ) from None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{str(path)!r} is not a head-score file ({FORMAT} version <= {VERSION}): {e}") from None
        if scores.dim() != 2 or (shape is not None and tuple(scores.shape) != tuple(shape)):
            raise ConfigError(f"{str(path)!r} scores {tuple(scores.shape)} (layers, kv heads); the model has {shape}")
        meta = {k: v for k, v in data.items() if k not in ("format", "version", "model", "scores")}
        return cls(scores, str(data.get("model", "")), meta)


def head_shape(model: nn.Module) -> tuple[int, int]:
    """(layers, key/value heads per layer) of a decoder model."""
    layers = decoder_layers(model)
    return len(layers), head_counts(layers[0].self_attn)[1]


@torch.inference_mode()
def induction_scores(model: nn.Module, n_tokens: int = 64, seed: int = 0, vocab: int | None = None) -> HeadScores:
    """RazorAttention's calibration: induction + copying attention on a random sequence of ``n_tokens`` repeated."""
    vocab = int(vocab or model.config.vocab_size)
    gen = torch.Generator().manual_seed(seed)
    lo = min(100, vocab // 4)  # skip the first ids, where special tokens usually sit
    seq = torch.randint(lo, vocab, (1, n_tokens), generator=gen)
    ids = torch.cat([seq, seq], dim=1)
    n = n_tokens
    att = attention_to_spans(model, ids, rows=(n, 2 * n), reduce_rows=False).tokens  # (L, H, R, T)
    rows = torch.arange(n)
    cur = n + rows
    induction = att[:, :, rows[:-1], cur[:-1] - n + 1].mean(-1)  # to the token after the earlier copy
    copying = att[:, :, rows, cur - n].mean(-1)  # to the earlier copy itself
    return HeadScores(group_mean(induction + copying, head_shape(model)[1]), meta={"calibration": "induction"})


@torch.inference_mode()
def copy_scores(
    gen: Generator,
    prompts: Sequence[Prompt],
    correct: Callable[[int, Generation], bool],
    max_new_tokens: int = 16,
    batch_size: int = 8,
) -> HeadScores:
    """Wu et al.'s retrieval score of every key/value head on ``prompts`` (``correct(i, generation)`` says whether
    prompt ``i`` was answered right; only those count). ``meta`` holds ``answered_right`` and ``rows`` (the answer
    tokens that counted). Raises ``ConfigError`` when no answer token appears in its prompt."""
    gen.warm_up()
    model = gen.model
    total, rows_used, right = None, 0, 0
    cfg = GenerationConfig(max_new_tokens=max_new_tokens)
    for s in range(0, len(prompts), batch_size):
        part = list(prompts[s : s + batch_size])
        for i, (p, g) in enumerate(zip(part, gen.generate_batch(part, config=cfg)), s):
            ans = [t for t in g.token_ids if t not in gen.eos_ids]
            if not ans or not correct(i, g):
                continue
            right += 1
            prompt = p.input_ids[0].cpu()
            n = prompt.numel()
            ids = torch.cat([prompt, torch.tensor(ans)])[None]
            att = attention_to_spans(model, ids, rows=(n - 1, n - 1 + len(ans)), reduce_rows=False).tokens.float()
            att = att[..., :n].cpu()  # (L, H, R, n): what each producing row reads in the prompt
            for r, tok in enumerate(ans):
                where = prompt == tok
                if not bool(where.any()):
                    continue  # a token the prompt does not hold cannot be copied
                mass = att[:, :, r, where].sum(-1)  # (L, H)
                total = mass if total is None else total + mass
                rows_used += 1
    if total is None:
        raise ConfigError("copy_scores: no answer token was found in its prompt; use more questions")
    per_kv = group_mean(total / rows_used, head_shape(model)[1])  # (L, H) -> (L, H_kv): mean over each group
    logger.info("copy scores: %d of %d answered right, %d answer rows", right, len(prompts), rows_used)
    return HeadScores(per_kv, gen.model_name, {"answered_right": right, "rows": rows_used})
