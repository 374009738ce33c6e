from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_model


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    """The test machine has 2 shared cores; one intra-op thread avoids oversubscription (10x faster here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="package", params=["llama", "qwen2"])
def tiny(request):
    return tiny_model(request.param)


@pytest.fixture(scope="package")
def tiny_llama():
    return tiny_model("llama")
