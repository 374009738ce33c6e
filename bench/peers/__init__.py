"""Peers: other libraries run on the same inputs as ragcore, each in its own environment where it needs one."""
