from __future__ import annotations

import copy
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from ragcore.chunking import chunk_text  # noqa: E402
from ragcore.generator import Generator  # noqa: E402

DOCS = {
    "jupiter": "Jupiter is the largest planet. The Great Red Spot is a storm on Jupiter larger than Earth.",
    "mars": "Mars is the red planet. Olympus Mons on Mars is the tallest volcano in the Solar System.",
    "saturn": "Saturn has the most extensive rings. Titan is Saturn's largest moon and has a thick atmosphere.",
    "earth": "Earth is the third planet from the Sun. The Moon causes most ocean tides on Earth.",
    "bananas": "Bananas are yellow fruit rich in potassium, grown in tropical regions.",
}


@pytest.fixture
def chunks():
    return [c for name, text in DOCS.items() for c in chunk_text(text, name)]


@pytest.fixture
def retriever(chunks):
    from retrieval.hybrid import HybridRetriever

    r = HybridRetriever()
    r.add(chunks)
    return r


@pytest.fixture(scope="session")
def _smol_session():
    g = Generator("smollm2-135m", device="cpu")
    g.warm_up()
    return g


@pytest.fixture
def smol(_smol_session):
    """The real SmolLM2-135M, loaded once per session and deep-copied per test."""
    return copy.deepcopy(_smol_session)


@pytest.fixture(scope="module")
def one_thread():
    """The test machine has 2 shared cores; one intra-op thread avoids oversubscription (10x faster here)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
