"""Which ragcore compressor matches which kvpress press, with which fields, and where the two cannot match.

Used by ``bench.kv_side_by_side`` and ``bench.kv_op_count``, which run both libraries in one process (the kvpress
environment with the repository on the path). ``import_peer`` imports ``bench.peers.kvpress.peer`` with stand-ins
for the modules kvpress imports at module level only for presses not used here.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

from ragcore.errors import ConfigError

METHODS = ("snapkv", "knorm", "streaming_llm", "expected_attention", "kvzip")
# imported by kvpress at module level only for presses not used here (DuoAttention, LUKV, ExpectedAttentionStats)
STANDINS = ("datasets", "fire", "requests")

# Where ragcore's compressor and kvpress's press differ with no parameter to align them.
NOTES = {
    "snapkv": [
        "pooling: kvpress avg-pools the window's votes (F.avg_pool1d, zero padding counted), ragcore max-pools",
        "kvpress scores only the keys before the window (window columns dropped after the softmax, then pooled); "
        "ragcore pools over all keys, window included, and protects the window",
        "both protect the observation window; kvpress needs a context longer than window_size "
        "(shorter ones run uncompressed there: n_uncompressed_theirs), ragcore compresses any length",
    ],
    "knorm": [],
    "streaming_llm": [],
    "expected_attention": [
        "covariance: kvpress divides by N, ragcore by N - 1",
        "kvpress leaves the sinks out of the softmax over keys, ragcore includes them (both then keep the sinks); "
        "this only changes the per-head normalisation before the group mean and the epsilon term",
        "ragcore computes the averaged rotation and scores in float32; kvpress in the model dtype (bf16 on GPU)",
    ],
    "kvzip": [
        "kvpress reconstructs the context after the chat template's prefix (the system turn's header) and leaves the "
        "prefix's scores at 0 but for the sinks; ragcore reconstructs every context token",
        "kvpress's reconstruction ends its instruction with the chat template's assistant header; ragcore's does not",
        "both score a token by the largest attention of any reconstruction query of its key/value group; kvpress's "
        "softmax spans the sinks, the chunk's own keys and the repeat, ragcore's every cached key and the repeat",
        "uneven budgets: kvpress zeroes pruned keys and values in place (fake compression), ragcore keeps each "
        "layer's longest head budget and masks the rest (kv bytes held can exceed 1 - ratio on both)",
    ],
}
# Matched per item, since kvpress derives them from the context length.
PER_ITEM = {
    "expected_attention": "n_recent = context_tokens - n_sink: kvpress takes its query statistics from every prefill "
    "query after the n_sink first, ragcore from the last n_recent",
}
COMMON_NOTES = [
    "kept tokens per layer: kvpress int(T * (1 - r)), ragcore T - int(r * T) (one more when r * T is not an "
    "integer) unless --match-kept gives ragcore kvpress's count as its budget",
    "importing kvpress wraps every transformers attention function (kvpress.attention_patch; a no-op without "
    "head-wise masks): both sides run through the same wrapped functions",
    "both prefill the context through the base model (no LM head) since commit 296f34d; runs of older code "
    "(kv-vs-kvpress-gpu, kv-vs-kvpress-gpu-quiet-1/2) prefilled ours through the causal LM with logits_to_keep=1",
]


def _standin(name: str) -> types.ModuleType:
    mod = types.ModuleType(name, f"stand-in for the missing {name!r} (bench.peers.kvpress.match)")
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def __getattr__(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)

        def missing(*_a: Any, **_k: Any) -> Any:
            raise ModuleNotFoundError(f"{name} is not installed (only a stand-in was imported for kvpress)")

        return missing

    mod.__getattr__ = __getattr__  # type: ignore[method-assign]
    return mod


def import_peer() -> tuple[types.ModuleType, list[str]]:
    """``bench.peers.kvpress.peer`` (which imports kvpress) and the names given stand-ins for that import."""
    import transformers  # noqa: F401  (first, so that its availability checks see the real environment)

    added = {n: _standin(n) for n in STANDINS if sys.modules.get(n) is None and importlib.util.find_spec(n) is None}
    sys.modules.update(added)
    try:
        peer = importlib.import_module("bench.peers.kvpress.peer")
    finally:
        for n, mod in added.items():  # kvpress keeps its references; nothing else sees the stand-ins
            if sys.modules.get(n) is mod:
                del sys.modules[n]
    return peer, sorted(added)


def press_config(press: Any) -> dict[str, Any]:
    """A press's class and dataclass fields (its hyperparameters), for the JSON."""
    return {"class": type(press).__name__, **{f.name: getattr(press, f.name) for f in dataclasses.fields(press)}}


def ours_kwargs(method: str, press: Any, ratio: float, n_ctx: int, match_kept: bool) -> dict[str, Any]:
    """ragcore compressor fields matching ``press``'s hyperparameters (per item: n_recent, budget)."""
    kw: dict[str, Any] = {"ratio": ratio}
    if method == "snapkv":
        kw.update(window=press.window_size, kernel_size=press.kernel_size)
    elif method == "streaming_llm":
        kw.update(n_sink=press.n_sink)
    elif method == "expected_attention":
        kw.update(
            n_future=press.n_future_positions,
            n_sink=press.n_sink,
            use_covariance=press.use_covariance,
            use_value_norm=press.use_vnorm,
            epsilon=float(press.epsilon),
            n_recent=max(1, n_ctx - press.n_sink),
        )
    elif method == "kvzip":
        kw.update(n_sink=press.n_sink, scope="heads" if press.layerwise else "global")  # layerwise: a pool per layer
    elif method != "knorm":
        raise ConfigError(f"no ragcore counterpart mapped for {method!r}")
    if match_kept:
        kw["budget"] = max(1, int(n_ctx * (1 - ratio)))  # kvpress.utils.compute_n_kept
    return kw


def compressor_config(comp: Any) -> dict[str, Any]:
    """A ragcore compressor's class and fields (non-scalars as their repr), for the JSON."""
    out = {"class": type(comp).__name__}
    for f in dataclasses.fields(comp):
        v = getattr(comp, f.name)
        out[f.name] = v if isinstance(v, (int, float, bool, str, type(None))) else repr(v)
    return out
