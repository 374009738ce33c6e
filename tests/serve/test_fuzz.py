"""Schemathesis against the app's OpenAPI schema (in-process ASGI, with the API key, so writes run too): no 5xx,
and every refused input is a 4xx whose body says what is wrong."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from ragcore.pipeline import Pipeline
from serve.app import create_app
from tests.serve.conftest import KEY, make_config, make_index


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, gen):
    cfg = make_config(make_index(tmp_path_factory.mktemp("fuzz")), max_new_tokens=4)
    app = create_app(cfg, Pipeline.from_config(cfg, generator=gen))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_5xx_and_every_4xx_says_why(api_schema, mode):
    """Valid inputs (positive) and inputs that break the schema (negative): never a 5xx; a refusal says why."""
    ops = [result.ok() for result in api_schema.get_all_operations()]
    assert len(ops) >= 7
    tried = 0
    for op in ops:

        @given(case=op.as_strategy(mode))
        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:
            r = case.call(headers={"X-API-Key": KEY})
            assert r.status_code < 500, (case.method, case.path, r.status_code, r.text[:300])
            if r.status_code >= 400:
                body = r.json()
                assert isinstance(body.get("message"), str) and body["message"], (case.path, r.status_code, body)

        try:
            check()
            tried += 1
        except Unsatisfiable:  # an operation without parameters or body has no invalid input to make
            assert mode is GenerationMode.NEGATIVE, (op.method, op.path)
    assert tried >= 4
