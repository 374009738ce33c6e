"""KV-cache compression: score cached tokens per head after prefill, keep the best, free the rest.

``COMPRESSORS`` maps names to classes; ``get_compressor("snapkv", ratio=0.5)`` builds one, and
``"caote:h2o"`` / ``"adaptive:tova"`` / ``"chunk:snapkv"`` / ``"layers:snapkv"`` / ``"passages:snapkv"`` / ``"pyramid:snapkv"`` / ``"global:snapkv"`` / ``"retrieval:snapkv"`` wrap an inner method, and options go
in brackets after a name: ``"chunk(chunk_size=20):snapkv(window=64)"``. Use with ``Generator.generate(...,
compressor=...)`` or directly: ``with compressor.apply(model) as report: model(...)``.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from compress.kv.a2sf import A2SF
from compress.kv.adaptive import AdaKV, GlobalAdaKV
from compress.kv.base import KVCompressor, KVReport
from compress.kv.caote import CAOTE
from compress.kv.chunk import ChunkKV
from compress.kv.expected_attention import ExpectedAttention
from compress.kv.h2o import H2O
from compress.kv.knorm import KNorm
from compress.kv.layers import LayerShared
from compress.kv.passages import PassageKV
from compress.kv.pyramid import PyramidKV
from compress.kv.random_press import RandomPress
from compress.kv.razor import Razor
from compress.kv.retrieval import RetrievalHeads
from compress.kv.snapkv import SnapKV
from compress.kv.streaming_llm import StreamingLLM
from compress.kv.tova import TOVA
from ragcore.errors import ConfigError

COMPRESSORS: dict[str, type[KVCompressor]] = {
    c.name: c
    for c in (
        StreamingLLM,
        SnapKV,
        H2O,
        KNorm,
        ExpectedAttention,
        TOVA,
        A2SF,
        CAOTE,
        AdaKV,
        GlobalAdaKV,
        ChunkKV,
        LayerShared,
        PassageKV,
        PyramidKV,
        Razor,
        RetrievalHeads,
        RandomPress,
    )
}
WRAPPERS = ("caote", "adaptive", "global", "chunk", "layers", "passages", "pyramid", "retrieval")
_SPEC = re.compile(r"\s*([a-z_0-9]+)\s*(?:\((.*)\))?\s*", re.S)


def split_top(text: str, sep: str) -> list[str]:
    """Split ``text`` at ``sep`` outside brackets: ``"chunk(a=1,b=2),snapkv"`` -> two parts at ``","``."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def _options(name: str, text: str | None) -> dict[str, Any]:
    """``"window=64, kernel_size=7"`` -> ``{"window": 64, "kernel_size": 7}`` (values are Python literals)."""
    out: dict[str, Any] = {}
    for item in split_top(text or "", ","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        try:
            if not eq or not key.strip().isidentifier():
                raise ValueError
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise ConfigError(f"bad option {item.strip()!r} in KV compressor {name!r}; write key=value") from None
    return out


def get_compressor(name: str, **kwargs: Any) -> KVCompressor:
    """Build a compressor by name; ``"wrapper:inner"`` (e.g. ``"adaptive:snapkv"``) sets the wrapper's inner, and
    ``"name(key=value, ...)"`` sets options (``kwargs`` such as ``ratio`` go to the outermost compressor)."""
    if not isinstance(name, str):
        raise ConfigError(f"compressor name must be a string, got {name!r}")
    head, *rest = split_top(name, ":")
    m = _SPEC.fullmatch(head)
    if m is None or m.group(1) not in COMPRESSORS:
        raise ConfigError(f"unknown KV compressor {name!r}; options: {', '.join(COMPRESSORS)}")
    base = m.group(1)
    kwargs = {**_options(name, m.group(2)), **kwargs}
    if rest:
        if base not in WRAPPERS:
            raise ConfigError(f"{base!r} takes no inner compressor (got {name!r}); wrappers: {', '.join(WRAPPERS)}")
        kwargs["inner"] = get_compressor(":".join(rest))
    try:
        return COMPRESSORS[base](**kwargs)
    except TypeError as e:
        raise ConfigError(f"bad options for KV compressor {name!r}: {e}") from e


__all__ = [
    "COMPRESSORS",
    "KVCompressor",
    "KVReport",
    "get_compressor",
    "split_top",
    *[c.__name__ for c in COMPRESSORS.values()],
]
