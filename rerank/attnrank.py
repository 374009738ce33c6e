"""AttnRank (Attention Basin, arXiv 2508.05128): put the most relevant passages where the model looks.

A model's attention to the passages of a prompt depends on where they sit, whatever they say: in the "attention
basin" the passages at both ends of the context get more attention than those in the middle. ``calibrate``
measures this positional profile once per model, and :class:`AttnRank` places the passage of relevance rank ``r``
into the slot with the ``r``-th highest attention.

The profile: for each calibration question (gold passage and distractors, ``N`` slots), the attention that the
question's tokens pay to each passage slot, summed over the slot's tokens, averaged over the question's tokens and
over heads, per layer; averaged over questions and normalised per layer to sum to 1 over the slots.

Layer rule: the layer with the largest edge-to-middle ratio, the attention of the WEAKER of the first and last
slots over the mean of the middle slots, is the one where the basin is deepest: both ends above the middle.
AttnRank follows that layer's slot order. (The mean of the two ends, the first rule, could not tell a basin from a
ramp toward the question: in qwen2.5-0.5b it chose a layer whose first slot lies below the middle and 92% of whose
edge attention sits on the last slot, next to the question, while accuracy is highest with the gold passage
first; docs/RESULTS.md, ``attn-profile-gpu`` and ``position-gpu`` of 2026-11-30.) The profile of every layer is
stored, so another layer can be chosen with ``attnrank(layer=L)``; a profile stored under an earlier rule gets
its layer chosen again by this one when loaded.

The profile is stored in the cache directory (``cache_dir()/profiles``) under the model's digest (its config and
a sample of every weight tensor) with the digest of the prompt format (the text ``Generator.prompt`` builds); a
profile made for another model or another prompt format is refused (:class:`ProfileMismatchError`). Figures:
docs/RESULTS.md, section ``attn-profile``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ragcore.attention import attention_to_spans
from ragcore.errors import ConfigError
from ragcore.models import cache_dir
from ragcore.stages import Stage, option
from ragcore.types import Chunk, ScoredChunk
from rerank.orders import place

logger = logging.getLogger(__name__)
PROFILE_VERSION = 1
LAYER_RULE = "largest edge-to-middle ratio: min(first, last slot) / mean(middle slots)"
_DIGESTS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


class ProfileMismatchError(ConfigError):
    """A stored attention profile was made for another model or another prompt format."""

    param = "model"


class ProfileNotFoundError(ConfigError):
    """No attention profile was calibrated for this model and prompt format."""

    param = "model"
    hint = "run `ragcore calibrate --model NAME` first"


def model_digest(model: torch.nn.Module) -> str:
    """A digest of a model: its config and the first 64 values of every parameter tensor (sha256, hex)."""
    if model in _DIGESTS:
        return _DIGESTS[model]
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(name.encode())
            h.update(p.detach().reshape(-1)[:64].float().cpu().numpy().tobytes())
    _DIGESTS[model] = digest = h.hexdigest()
    return digest


def prompt_format(lm: Any) -> str:
    """A digest of the prompt format: the text ``lm.prompt`` builds for a fixed question and two passages."""
    text = lm.prompt("Q?", [Chunk("P1", "s1"), Chunk("P2", "s2")]).text
    return hashlib.sha256(text.encode()).hexdigest()


def edge_to_middle(profile: np.ndarray) -> np.ndarray:
    """Per layer, the attention of the weaker of the first and last slot over the mean of the middle slots: above
    1 only where both ends draw more than the middle (a basin).

    Parameters
    ----------
    profile : ndarray, shape (L, N)
        Attention share per layer and slot (N >= 3).
    """
    edges = np.minimum(profile[:, 0], profile[:, -1])
    return edges / np.maximum(profile[:, 1:-1].mean(1), 1e-12)


def choose_layer(profile: np.ndarray) -> int:
    """The layer :data:`LAYER_RULE` picks from an (L, N) profile."""
    return int(np.argmax(edge_to_middle(np.asarray(profile, dtype=float))))


@dataclass
class Profile:
    """A model's positional attention profile.

    Parameters
    ----------
    model : str
        The generator's name.
    digest : str
        :func:`model_digest` of the model it was measured on.
    prompt_format : str
        :func:`prompt_format` of the prompts it was measured with.
    attention : list of list of float, shape (L, N)
        Share of the question's passage attention that goes to each slot, per layer (rows sum to 1).
    n : int
        Calibration questions.
    layer : int
        The layer chosen by :data:`LAYER_RULE`.
    """

    model: str
    digest: str
    prompt_format: str
    attention: list[list[float]]
    n: int
    layer: int
    data: str = ""
    created: str = ""
    rule: str = LAYER_RULE
    version: int = PROFILE_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def slots(self) -> int:
        return len(self.attention[0])

    def ratios(self) -> list[float]:
        """Edge-to-middle ratio of every layer."""
        return edge_to_middle(np.asarray(self.attention)).tolist()

    def slot_order(self, n: int, layer: int | None = None) -> list[int]:
        """Slots of an ``n``-passage prompt from the most attended to the least, at ``layer`` (default: the
        chosen one). For ``n`` other than the calibrated slot count the profile is resampled linearly over the
        relative position (first slot to first, last to last)."""
        layer = self.layer if layer is None else layer
        if not -len(self.attention) <= layer < len(self.attention):
            raise ConfigError(f"layer must be in [0, {len(self.attention) - 1}] for this profile, got {layer!r}")
        p = np.asarray(self.attention[layer], dtype=float)
        if n != len(p):
            p = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(p)), p) if n > 1 else p[:1]
        return [int(i) for i in np.argsort(-p, kind="stable")]

    def check(self, lm: Any) -> None:
        """Refuse this profile for a generator with another model or prompt format."""
        digest, fmt = model_digest(lm.model), prompt_format(lm)
        if self.digest != digest:
            raise ProfileMismatchError(
                f"the attention profile was calibrated for model {self.model!r} (digest {self.digest[:12]}), not "
                f"for {lm.model_name!r} (digest {digest[:12]})",
                hint=f"run `ragcore calibrate --model {lm.model_name}`",
            )
        if self.prompt_format != fmt:
            raise ProfileMismatchError(
                f"the attention profile of {self.model!r} was calibrated with another prompt format "
                f"({self.prompt_format[:12]}, now {fmt[:12]})",
                hint=f"run `ragcore calibrate --model {lm.model_name}` again",
            )

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".profile-")
        with os.fdopen(fd, "w") as f:
            json.dump(self.__dict__, f, indent=1)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        path = Path(path)
        if not path.exists():
            raise ProfileNotFoundError(f"no attention profile at {str(path)!r}")
        try:
            d = json.loads(path.read_text())
            if d.get("version") != PROFILE_VERSION:
                raise ConfigError(f"profile version {d.get('version')!r}, expected {PROFILE_VERSION}")
            prof = cls(**d)
        except (json.JSONDecodeError, TypeError, ConfigError) as e:
            raise ProfileMismatchError(f"{str(path)!r} is not an attention profile this version reads: {e}") from e
        if prof.rule != LAYER_RULE:  # the measurement stands; the layer follows today's rule
            logger.info(
                "profile %s: layer chosen again by %r (stored: %d by %r)", path, LAYER_RULE, prof.layer, prof.rule
            )
            prof.layer, prof.rule = choose_layer(prof.attention), LAYER_RULE
        return prof


def profile_path(lm: Any) -> Path:
    """Where the profile of ``lm``'s model and prompt format lives in the cache directory."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(lm.model_name).name)
    return cache_dir() / "profiles" / f"{safe}-{model_digest(lm.model)[:16]}-{prompt_format(lm)[:8]}.json"


@torch.inference_mode()
def slot_attention(
    lm: Any, question: str, passages: Sequence[Chunk | ScoredChunk], rows: str = "question"
) -> np.ndarray:
    """(L, N): attention of the question's tokens (``rows="question"``; ``"last"``: the prompt's last token) to
    each passage slot (summed over its tokens, averaged over the rows and the heads), per layer, for one prompt."""
    prompt = lm.prompt(question, passages)
    names = [f"passage:{i + 1}" for i in range(len(passages))]
    att = attention_to_spans(lm.model, prompt.input_ids, prompt.spans, rows=rows)
    return torch.stack([att.spans[n].mean(-1) for n in names], dim=1).numpy()


def calibrate(
    lm: Any, examples: Iterable[tuple[str, Sequence[Chunk | ScoredChunk]]], data: str = "", progress: bool = False
) -> Profile:
    """Measure ``lm``'s positional attention profile over ``examples`` (question, passages), all with the same
    number of passages (>= 3); the layer is chosen by :data:`LAYER_RULE`."""
    from tqdm.auto import tqdm

    lm.warm_up()
    total, n, slots = None, 0, None
    for question, passages in tqdm(list(examples), desc="calibrating", disable=not progress):
        if slots is None:
            slots = len(passages)
            if slots < 3:
                raise ConfigError(f"calibration needs at least 3 passages per question, got {slots}")
        elif len(passages) != slots:
            raise ConfigError(f"every calibration question needs {slots} passages, one has {len(passages)}")
        a = slot_attention(lm, question, passages)
        a = a / np.maximum(a.sum(1, keepdims=True), 1e-12)
        total = a if total is None else total + a
        n += 1
    if total is None:
        raise ConfigError("calibration needs at least one question")
    prof = total / n
    layer = choose_layer(prof)
    return Profile(
        lm.model_name,
        model_digest(lm.model),
        prompt_format(lm),
        prof.tolist(),
        n,
        layer,
        data=data,
        created=time.strftime("%Y-%m-%d"),
    )


@dataclass
class AttnRank(Stage):
    """Attention Basin reranking (arXiv 2508.05128): the passage of relevance rank ``r`` goes into the slot with
    the ``r``-th highest calibrated attention.

    Parameters
    ----------
    layer : int or None
        The profile's layer to follow; None: the one calibration chose (:data:`LAYER_RULE`).
    profile : str or None
        A profile file; None: the one of the generator's model in the cache directory (:func:`profile_path`).
    """

    name: ClassVar[str] = "attnrank"
    layer: int | None = option(None, kind=int, minimum=0)
    profile: str | None = option(None, kind=str)

    def load(self, lm: Any) -> Profile:
        """The profile for ``lm``, checked against its model and prompt format."""
        lm.warm_up()
        path = Path(self.profile) if self.profile else profile_path(lm)
        if not path.exists():
            raise ProfileNotFoundError(
                f"no attention profile of {lm.model_name!r} with this prompt format at {str(path)!r}",
                hint=f"run `ragcore calibrate --model {lm.model_name}` first",
            )
        prof = _cached_profile(str(path), path.stat().st_mtime_ns)
        prof.check(lm)
        return prof

    def prepare(self, lm: Any) -> None:
        self.load(lm)

    def rerank(self, question: str, passages: Sequence[ScoredChunk], lm: Any) -> list[ScoredChunk]:
        if not passages:
            return []
        order = self.load(lm).slot_order(len(passages), self.layer)
        return place(passages, order, self.name)


_PROFILES: dict[tuple[str, int], Profile] = {}


def _cached_profile(path: str, mtime: int) -> Profile:
    key = (path, mtime)
    if key not in _PROFILES:
        _PROFILES[key] = Profile.load(path)
    return _PROFILES[key]
