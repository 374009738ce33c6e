"""Attribution: tracing an answer back to the context segments that caused it (``Tracer.trace``), and detectors of
instructions aimed at the assistant (``Detector.flag``).

Each is registered in the ``tracer`` or ``detector`` registry of :mod:`ragcore.registry` by the lines below.
``INTERACTIVE_TRACER`` is the setting the Pipeline and ``ragcore ask --tracer`` use by default (one forward pass;
docs/RESULTS.md, section "Attribution", gives its cost against the generation's).
"""

from ragcore.attribution.detectors import JudgeDetector, RuleDetector
from ragcore.attribution.tracers import AttnTrace, ContextCite, LeaveOneOut, RawAttention, Trace
from ragcore.registry import registry

TRACERS = registry("tracer")
TRACERS.add(AttnTrace, RawAttention, LeaveOneOut, ContextCite)
DETECTORS = registry("detector")
DETECTORS.add(RuleDetector, JudgeDetector)

INTERACTIVE_TRACER = "attntrace(subsamples=1, keep=1.0)"
DEFAULT_DETECTOR = "rules"

__all__ = ["DETECTORS", "TRACERS", "INTERACTIVE_TRACER", "DEFAULT_DETECTOR", "Trace"]
