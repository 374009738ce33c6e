"""Benchmark drivers: thin scripts over the library, run from the repository root as ``python -m bench.NAME``.

Each driver that measures something writes its section of docs/RESULTS.md (``bench.results.write_section``);
``bench/README.md`` lists them. Peers that need their own environment live in ``bench/peers/``.
"""
