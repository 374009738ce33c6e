"""serve stage (see docs and issues)."""
