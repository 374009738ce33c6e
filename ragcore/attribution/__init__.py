"""Attribution: tracing an answer back to the context segments that caused it (``Tracer.trace``), and detectors of
instructions aimed at the assistant (``Detector.flag``).

Each is registered in the ``tracer`` or ``detector`` registry of :mod:`ragcore.registry` by the lines below.
"""

from ragcore.registry import registry

TRACERS = registry("tracer")
TRACERS.add()
DETECTORS = registry("detector")
DETECTORS.add()
