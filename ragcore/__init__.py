"""ragcore: attention-driven retrieval-augmented generation."""
