"""The authors' InfiniRetri package (``infini-retri`` 0.0.3, arXiv 2502.12962) as a peer of
``compress.context.infiniretri``, on the inputs of ``ragcore eval longctx``.

* ``inputs``: the haystacks, questions and answers that ``ragcore eval longctx --data D --tokens T --limit N``
  reads (``eval.context_suites.longctx_items``), written as one JSON file (ragcore's venv);
* ``peer``: ``infini_retri.InfiniRetri`` on those items (its own venv, ``.venv-infini``; imports no ragcore
  module, only the standard-library modules ``eval.metrics``, ``eval.stats``, ``eval.report`` and
  ``eval.resources``), scored and written in the shape of ``ragcore eval longctx --out`` so that
  ``python -m bench.rerank_context longctx`` renders its rows beside ragcore's.

Nothing is imported here, so importing ``bench.peers.infini_retri.peer`` loads nothing from ragcore.
"""
