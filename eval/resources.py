"""Peak memory of a run, the same way for ragcore's suites and for peers run in their own environments.

Standard library only at import time (peers import it without ragcore's dependencies); ``torch`` is needed only
to read a CUDA device's counter.
"""

from __future__ import annotations

import resource
import sys
from typing import Any


def peak_memory(device: Any) -> int:
    """Peak bytes: a CUDA ``device``'s peak allocation since the last ``torch.cuda.reset_peak_memory_stats``, or
    on CPU (any other device) the process's peak resident size (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)
