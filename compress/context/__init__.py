"""Context compressors: which text of the passages the generator reads
(``ContextCompressor.compress(question, passages, lm)``).

Each is registered in the ``context_compressor`` registry of :mod:`ragcore.registry` by the line below.
"""

from ragcore.registry import registry

CONTEXT_COMPRESSORS = registry("context_compressor")
CONTEXT_COMPRESSORS.add()
