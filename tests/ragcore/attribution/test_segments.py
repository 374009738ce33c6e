"""A tracer's rebuilt prompt (some segments kept) keeps the prompt's instruction and answer prefix."""

from __future__ import annotations

import numpy as np

from ragcore.attribution.segments import rebuild, split
from tests.helpers import PASSAGES, QUESTION


def test_rebuilt_prompt_keeps_system_and_answer_prefix(smol):
    p = smol.prompt(QUESTION, PASSAGES, "Answer briefly.", answer_prefix="It was built in")
    segs = split(p.passages)
    keep = np.zeros(len(segs), dtype=bool)
    keep[0] = True
    new = rebuild(smol, p, segs, keep).prompt
    assert new.answer_prefix == "It was built in" and new.text.endswith("It was built in")
    assert new.system == "Answer briefly." and len(new.passages) == 1
