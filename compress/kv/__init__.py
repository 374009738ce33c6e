"""KV-cache compression: score cached tokens per head after prefill, keep the best, free the rest.

``COMPRESSORS`` maps names to classes; ``get_compressor("snapkv", ratio=0.5)`` builds one, and
``"caote:h2o"`` / ``"adaptive:tova"`` / ``"chunk:snapkv"`` wrap an inner method. Use with ``Generator.generate(...,
compressor=...)`` or directly: ``with compressor.apply(model) as report: model(...)``.
"""

from __future__ import annotations

from typing import Any

from compress.kv.a2sf import A2SF
from compress.kv.adaptive import AdaKV
from compress.kv.base import KVCompressor, KVReport
from compress.kv.caote import CAOTE
from compress.kv.chunk import ChunkKV
from compress.kv.expected_attention import ExpectedAttention
from compress.kv.h2o import H2O
from compress.kv.knorm import KNorm
from compress.kv.random_press import RandomPress
from compress.kv.razor import Razor
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
        ChunkKV,
        Razor,
        RandomPress,
    )
}
WRAPPERS = ("caote", "adaptive", "chunk")


def get_compressor(name: str, **kwargs: Any) -> KVCompressor:
    """Build a compressor by name; ``"wrapper:inner"`` (e.g. ``"adaptive:snapkv"``) sets the wrapper's inner."""
    if not isinstance(name, str):
        raise ConfigError(f"compressor name must be a string, got {name!r}")
    base, _, inner = name.partition(":")
    if base not in COMPRESSORS:
        raise ConfigError(f"unknown KV compressor {name!r}; options: {', '.join(COMPRESSORS)}")
    if inner:
        if base not in WRAPPERS:
            raise ConfigError(f"{base!r} takes no inner compressor (got {name!r}); wrappers: {', '.join(WRAPPERS)}")
        kwargs["inner"] = get_compressor(inner)
    try:
        return COMPRESSORS[base](**kwargs)
    except TypeError as e:
        raise ConfigError(f"bad options for KV compressor {name!r}: {e}") from e


__all__ = ["COMPRESSORS", "KVCompressor", "KVReport", "get_compressor", *[c.__name__ for c in COMPRESSORS.values()]]
