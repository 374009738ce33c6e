"""Compression of what the model reads: KV-cache compression (``compress.kv``)."""
