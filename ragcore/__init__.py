"""ragcore: attention-driven retrieval-augmented generation.

One import surface, loaded lazily so ``import ragcore`` stays light::

    from ragcore import Pipeline, HybridRetriever, Generator, get_compressor, chunk_file
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use)
_LAZY = {
    "Pipeline": "ragcore.pipeline",
    "Generator": "ragcore.generator",
    "GenerationConfig": "ragcore.generator",
    "CompressedContext": "ragcore.context_cache",
    "chunk_file": "ragcore.chunking",
    "chunk_text": "ragcore.chunking",
    "Chunk": "ragcore.types",
    "ScoredChunk": "ragcore.types",
    "Answer": "ragcore.types",
    "HybridRetriever": "retrieval.hybrid",
    "get_compressor": "compress.kv",
    "registry": "ragcore.registry",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ragcore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
