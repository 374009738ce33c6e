"""NVIDIA kvpress 0.5.5 as a peer of ``compress.kv`` (it needs transformers < 5.3: its own venv).

* ``prompts``: ragcore's prompts as token ids, written as JSON lines (ragcore's venv);
* ``peer``: kvpress's presses on those ids (the kvpress venv; imports no ragcore module, only the standard-library
  modules ``eval.metrics``, ``eval.stats`` and ``eval.report``);
* ``match``: which ragcore compressor and fields match which press, and where they cannot match
  (used by ``bench.kv_side_by_side`` and ``bench.kv_op_count``, which run both in one process).

Nothing is imported here, so importing ``bench.peers.kvpress.peer`` loads nothing from ragcore.
"""
