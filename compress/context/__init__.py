"""Context compressors: which text of the passages the generator reads
(``ContextCompressor.compress(question, passages, lm)``).

Each is registered in the ``context_compressor`` registry of :mod:`ragcore.registry` by the line below; the
conformance suite (tests/compress/context/test_conformance.py) checks every one.
"""

from compress.context.crag import CRAG
from compress.context.infiniretri import InfiniRetri
from ragcore.registry import registry

CONTEXT_COMPRESSORS = registry("context_compressor")
CONTEXT_COMPRESSORS.add(InfiniRetri, CRAG)

__all__ = ["CONTEXT_COMPRESSORS", "CRAG", "InfiniRetri"]
