"""Schemathesis against the app's OpenAPI schema (in-process ASGI, with the API key, so writes run too): no 5xx,
and every refused input is a 4xx whose body says what is wrong."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from ragcore.pipeline import Pipeline
from serve.app import create_app
from tests.serve.conftest import KEY, make_config, make_index


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, gen):
    cfg = make_config(make_index(tmp_path_factory.mktemp("fuzz")), max_new_tokens=4)
    app = create_app(cfg, Pipeline.from_config(cfg, generator=gen))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_no_5xx_and_every_4xx_says_why(api_schema):
    ops = [result.ok() for result in api_schema.get_all_operations()]
    assert len(ops) >= 7

    for op in ops:

        @given(case=op.as_strategy())
        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:
            r = case.call(headers={"X-API-Key": KEY})
            assert r.status_code < 500, (case.method, case.path, r.status_code, r.text[:300])
            if r.status_code >= 400:
                body = r.json()
                assert isinstance(body.get("message"), str) and body["message"], (case.path, r.status_code, body)

        check()
