"""compress stage (see docs and issues)."""
