from __future__ import annotations

import pytest

from tests.helpers import tiny_model


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every KV compressor test runs with one intra-op thread (tests/conftest.py)."""


@pytest.fixture(scope="package", params=["llama", "qwen2"])
def tiny(request):
    return tiny_model(request.param)


@pytest.fixture(scope="package")
def tiny_llama():
    return tiny_model("llama")
