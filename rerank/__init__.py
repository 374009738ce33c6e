"""rerank stage (see docs and issues)."""
