"""KVzap: KVzip+'s question-agnostic scores predicted from each layer's hidden states, without the reconstruction.

KVzip (``compress.kv.kvzip``) scores a cached token by the attention it receives while the model repeats the
context: a second prefill that costs about two prefills (docs/RESULTS.md, kv-reuse-batch-cpu). KVzap (Jegou &
Jeblick, 2026, https://arxiv.org/abs/2601.07891; kvpress's ``KVzapPress``) fits, once per model, a small surrogate
per layer that predicts ``log`` of KVzip+'s score of each key/value head from the layer's normed input alone, and
then scores any context during its prefill at the cost of one ``d x H_kv`` matrix product per layer.

Surrogate files are safetensors (no pickle)::

    weight (L, d, H_kv) float32, bias (L, H_kv) float32
    metadata: format "ragcore-kvzap-surrogate", version 1, fingerprint (the model's, below), sha256 (of the two
    tensors' bytes), and how it was fitted (texts, tokens, held-out R^2)

A file of another format or version, a truncated or changed file (its sha256) or one fitted for another model (its
fingerprint) is refused with a ``ConfigError``. ``fit_surrogate`` fits one (ridge regression, closed form);
``python -m bench.kvzap_fit`` drives it on NQ-open contexts for a bundled model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from compress.kv.base import KVCall, LayerPrefill
from compress.kv.kvzip import KVzip
from ragcore import cache as kvcache
from ragcore.attention import decoder_layers, head_counts
from ragcore.errors import ConfigError
from ragcore.stages import option

if TYPE_CHECKING:
    from ragcore.prompt import Prompt

logger = logging.getLogger(__name__)

FORMAT, VERSION = "ragcore-kvzap-surrogate", 1
SURROGATES = Path(__file__).with_name("surrogates")  # bundled surrogates, found by the model's fingerprint
TARGETS = "kvzip(assistant_turn=True, plus=True)"  # what a surrogate predicts: KVzip+'s scores, the paper's layout


def fingerprint(model: nn.Module) -> str:
    """A model's identity for its surrogate: its shapes and the first rows of its input embeddings rounded to
    bfloat16 (the same on a float32 CPU copy and a bfloat16 GPU copy of one checkpoint), hashed."""
    n_h, n_kv, d = head_counts(decoder_layers(model)[0].self_attn)
    emb = model.get_input_embeddings().weight[:16].detach().to("cpu", torch.bfloat16).view(torch.int16)
    h = hashlib.sha256(f"{type(model).__name__}:{len(decoder_layers(model))}:{n_h}:{n_kv}:{d}".encode())
    h.update(emb.numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class Surrogate:
    """A fitted KVzap surrogate: per layer, ``log score (H_kv,) = hidden (d,) @ weight[l] + bias[l]``."""

    weight: torch.Tensor  # (L, d, H_kv)
    bias: torch.Tensor  # (L, H_kv)
    fingerprint: str
    meta: dict[str, Any] = field(default_factory=dict)
    _on: dict[Any, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False, compare=False)

    def predict(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """Predicted log KVzip+ scores (B, H_kv, T) in float32 of the layer's normed input ``hidden`` (B, T, d)."""
        key = hidden.device
        if key not in self._on:
            self._on[key] = (self.weight.to(key), self.bias.to(key))
        w, b = self._on[key]
        return (hidden.float() @ w[layer] + b[layer]).transpose(1, 2)

    def tensor_sha256(self) -> str:
        h = hashlib.sha256()
        for t in (self.weight, self.bias):
            h.update(t.contiguous().float().numpy().tobytes())
        return h.hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write the safetensors file (atomically: a temporary file in the same folder, then renamed)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "version": str(VERSION),
            "fingerprint": self.fingerprint,
            "sha256": self.tensor_sha256(),
            "fit": json.dumps(self.meta, sort_keys=True),
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
        os.close(fd)
        try:
            save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> Surrogate:
        """Read a surrogate file, checked (format, version, sha256, and the ``model``'s fingerprint when given).
        Raises ``ConfigError`` quoting the path."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no KVzap surrogate file at {str(path)!r} (fit one with python -m bench.kvzap_fit)")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in ("weight", "bias")}
        except (SafetensorError, OSError, KeyError, ValueError) as e:
            raise ConfigError(f"{str(path)!r} is not a KVzap surrogate file (truncated or damaged?): {e}") from None
        if meta.get("format") != FORMAT or meta.get("version") != str(VERSION):
            raise ConfigError(
                f"{str(path)!r} is {meta.get('format')!r} version {meta.get('version')!r}; "
                f"this ragcore reads {FORMAT!r} version {VERSION}"
            )
        out = cls(tensors["weight"].float(), tensors["bias"].float(), meta.get("fingerprint", ""))
        if out.tensor_sha256() != meta.get("sha256"):
            raise ConfigError(f"{str(path)!r} does not match its sha256: the file was changed")
        out.meta = json.loads(meta.get("fit", "{}"))
        if model is not None and out.fingerprint != fingerprint(model):
            raise ConfigError(
                f"{str(path)!r} was fitted for another model (fingerprint {out.fingerprint}, this model's is "
                f"{fingerprint(model)}): fit one for it with python -m bench.kvzap_fit"
            )
        return out


def kvzip_targets(
    model: nn.Module, input_ids: torch.Tensor, prompt: Prompt | None = None, targets: str = TARGETS
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One context's training pair: per layer, the prefill's normed attention input (T, d) and ``log`` of KVzip's
    scores (T, H_kv) (``targets``: the KVzip spec, KVzip+ with the paper's layout by default), both float32 on the
    CPU. ``input_ids`` (1, T); ``prompt`` (with its tokenizer) gives the reconstruction's chat layout."""
    from compress.kv import get_compressor

    kvzip = get_compressor(targets, ratio=0.5)
    if not isinstance(kvzip, KVzip):
        raise ConfigError(f"kvzap: targets must be a kvzip spec, got {targets!r}", param="targets")
    hidden: dict[int, torch.Tensor] = {}

    def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if kvcache.from_call(kwargs) is not cache:
            return
        h = kwargs.get("hidden_states", args[0] if args else None)
        hidden[module.layer_idx] = h[0].float().cpu()

    cache = kvcache.new_cache(model.config)
    base = getattr(model, model.base_model_prefix, model)
    ids = input_ids.to(model.device)
    with torch.no_grad():
        with kvcache.attention_hooks(model, pre=grab):
            kvcache.call(base, cache, input_ids=ids, use_cache=True)
        call = KVCall(kvzip, model, cache, prompt)
        call.inputs["input_ids"] = ids
        scores = kvzip.reconstruction_scores(call, ids.shape[1])
    n = len(decoder_layers(model))
    return [hidden[i] for i in range(n)], [s[0].T.float().clamp_min(1e-12).log().cpu() for s in scores]


def fit_surrogate(
    model: nn.Module,
    contexts: Iterable[tuple[torch.Tensor, Prompt | None]],
    ridge: float = 1e-2,
    holdout: int = 0,
    targets: str = TARGETS,
    progress: bool = False,
) -> Surrogate:
    """Fit a linear KVzap surrogate by ridge regression (closed form, float64 normal equations per layer) on
    ``contexts``, pairs of (input_ids (1, T), prompt or None). The last ``holdout`` contexts are not fitted but
    scored: their R^2 per layer and the mean go into ``meta`` (and the log). ``ridge`` is scaled by the mean
    diagonal of each layer's Gram matrix."""
    from tqdm.auto import tqdm

    items = list(contexts)
    if len(items) <= holdout:
        raise ConfigError(f"kvzap: {len(items)} contexts leave none to fit after holdout={holdout}")
    n_layers = len(decoder_layers(model))
    gram = xty = None
    n_tok = 0
    tests: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
    for i, (ids, prompt) in enumerate(tqdm(items, desc="kvzap targets", disable=not progress)):
        xs, ys = kvzip_targets(model, ids, prompt, targets)
        if i >= len(items) - holdout:
            tests.append((xs, ys))
            continue
        x = torch.stack([torch.nn.functional.pad(h.double(), (0, 1), value=1.0) for h in xs])  # (L, T, d + 1)
        y = torch.stack(ys).double()  # (L, T, H_kv)
        g, c = x.transpose(1, 2) @ x, x.transpose(1, 2) @ y
        gram, xty = (g, c) if gram is None else (gram + g, xty + c)
        n_tok += x.shape[1]
    d1 = gram.shape[-1]
    eye = torch.eye(d1, dtype=torch.float64)
    eye[-1, -1] = 0  # the bias is not shrunk
    lam = ridge * gram.diagonal(dim1=1, dim2=2)[:, :-1].mean(-1)  # (L,)
    w = torch.linalg.solve(gram + lam[:, None, None] * eye, xty)  # (L, d + 1, H_kv)
    meta: dict[str, Any] = {"targets": targets, "contexts": len(items) - holdout, "tokens": n_tok, "ridge": ridge}
    out = Surrogate(w[:, :-1].float(), w[:, -1].float(), fingerprint(model), meta)
    if tests:
        r2 = []
        for layer in range(n_layers):
            y = torch.cat([t[1][layer] for t in tests])
            p = torch.cat([out.predict(layer, t[0][layer][None])[0].T for t in tests])
            r2.append(float(1 - ((y - p) ** 2).sum() / ((y - y.mean(0)) ** 2).sum().clamp_min(1e-12)))
        meta.update(holdout=len(tests), r2_mean=round(sum(r2) / len(r2), 4), r2=[round(v, 4) for v in r2])
        logger.info("kvzap: held-out R^2 %.3f (per layer %s)", meta["r2_mean"], meta["r2"])
    return out


# per model, its surrogate per ``surrogate`` option (a file, or None: bundled or calibrated), found once
# model -> {(surrogate option, folder searched): surrogate or None}
_FOR_MODEL: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str | None, Path], Surrogate | None]] = (
    weakref.WeakKeyDictionary()
)
_LOCK = threading.Lock()


@dataclass
class KVzap(KVzip):
    """KVzap (Jegou & Jeblick, 2026, "KVzap: Fast, Adaptive, and Faithful KV Cache Pruning",
    https://arxiv.org/abs/2601.07891; kvpress's ``KVzapPress``, linear model): question-agnostic scores predicted
    from the prefill's hidden states by a surrogate fitted to KVzip+ (``fit_surrogate``), so a context is scored
    during its own prefill, with no reconstruction pass. A layer's scores are ``exp`` of the surrogate's predicted
    log KVzip+ scores (B, H_kv, T); the selection is KVzip's (``scope``, ``safeguard``), since the predictions
    compare across layers and heads as KVzip's scores do.

    Which surrogate: ``surrogate`` (a file path) if given; else a bundled file (``compress/kv/surrogates/``) whose
    fingerprint is the model's (qwen2.5-0.5b and smollm2-135m are bundled); else none, and the scores are KVzip+'s
    own, from the reconstruction (what a surrogate predicts, at KVzip's cost; a warning says so: fit one with
    ``python -m bench.kvzap_fit``). Cached positions before the prefill's own rows (a prefill on a filled cache)
    have no hidden states here and score as the best predicted position (kept first).

    Measured (docs/RESULTS.md), question-agnostic on qwen2.5-0.5b: with KVzip's selection of
    ``compress.kv.DEFAULT_AGNOSTIC`` (the class defaults), within noise of that KVzip on NQ-open (kvzap-dev-gpu,
    kvzap-head-gpu) and on key-value retrieval reused for 10 questions (kv-reuse-kvzap-gpu, kv-reuse-kvzap-cpu), at
    a fraction of its compression time (kv-vs-kvpress-kvzap-gpu). ``scope="layer"`` tied on NQ-open but answered
    none of 60 key-value questions (kv-reuse-kvzap-layer-cpu): a head that copies long strings needs more than
    its layer's share.

    Parameters
    ----------
    surrogate:
        Path of a surrogate file (see the module docstring); None: the bundled one for the model, else KVzip+'s
        own scores.
    scope, safeguard, kernel_size, keep_system_prompt, n_sink:
        As in :class:`KVzip` (``safeguard=0.2`` by default, as the KVzip setting the development slice chose).
    chunk, instruction, assistant_turn, plus, score_dtype:
        The reconstruction's, as in :class:`KVzip`, used only without a surrogate; by default the layout that the
        bundled surrogates predict (``assistant_turn=True, plus=True``: KVzip+ in the paper's chat layout).
    ratio, budget, protect_last:
        As in :class:`KVCompressor`.
    """

    surrogate: str | None = option(None, kind=str)
    assistant_turn: bool = option(True)
    plus: bool = option(True)
    safeguard: float = option(0.2, low=0, high=1)
    name: ClassVar[str] = "kvzap"

    def prepare(self, model: nn.Module) -> None:
        self.surrogate_for(model)

    def surrogate_for(self, model: nn.Module) -> Surrogate | None:
        """The surrogate this compressor uses on ``model``, or None (KVzip+'s own scores); found on first use, then
        remembered per model (and per folder of bundled surrogates searched)."""
        key = (self.surrogate, SURROGATES)
        with _LOCK:
            found = _FOR_MODEL.setdefault(model, {})
            if key not in found:
                found[key] = self.find_surrogate(model)
            return found[key]

    def find_surrogate(self, model: nn.Module) -> Surrogate | None:
        """The surrogate for ``model`` (see the class docstring for the order in which it is looked up)."""
        if self.surrogate is not None:
            return Surrogate.load(self.surrogate, model)
        fp = fingerprint(model)
        for path in sorted(SURROGATES.glob("*.safetensors")):
            try:
                found = Surrogate.load(path)
            except ConfigError as e:
                logger.warning("kvzap: skipping a bundled surrogate: %s", e)
                continue
            if found.fingerprint == fp:
                logger.info("kvzap: surrogate %s", path.name)
                return found
        logger.warning(
            "kvzap: no surrogate fitted for this model (fingerprint %s): scoring with KVzip+'s reconstruction, "
            "about two prefills more per context (fit one with python -m bench.kvzap_fit)",
            fp,
        )
        return None

    def score(self, x: LayerPrefill) -> torch.Tensor:
        sur = self.surrogate_for(x.call.model)
        if sur is None:
            raise NotImplementedError("kvzap without a surrogate scores every layer at once (see keep)")
        pred = sur.predict(x.layer, x.hidden).exp()  # (B, H_kv, T_q)
        before = x.key_offset
        if before:
            top = pred.amax(-1, keepdim=True).expand(*pred.shape[:2], before)
            pred = torch.cat([top, pred], -1)
        return pred

    def keep(self, x: LayerPrefill, k: int) -> None:
        if self.surrogate_for(x.call.model) is None:  # KVzip+'s scores, after the last layer's prefill
            super().keep(x, k)
            return
        held = x.call.gather(x.layer, self.pool(self.checked_score(x)))
        if held is not None:  # every layer scored: one selection over the whole cache, as KVzip's
            self.prune_all(x.call, [s for _, s in held], k)
