"""A real server on 127.0.0.1: asks beyond the concurrency cap get 200 or 429 (never a 5xx or a hang) and the
server stays ready; concurrent asks with a KV compressor give the answers sequential ones give."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from ragcore.pipeline import Pipeline
from serve.app import create_app
from tests.serve.conftest import Server, make_config

QUESTIONS = [
    "Which planet has the tallest volcano?",
    "Which moon has a thick atmosphere?",
    "What causes ocean tides on Earth?",
    "What is the Great Red Spot?",
]


def test_asks_beyond_the_cap_get_200_or_429_and_the_server_stays_ready(index, gen):
    cfg = make_config(index, max_concurrency=1, retry_after_s=2)
    with Server(create_app(cfg, Pipeline.from_config(cfg, generator=gen))) as s:

        def ask(i: int) -> httpx.Response:
            return httpx.post(f"{s.url}/v1/ask", json={"question": QUESTIONS[i % 4]}, timeout=60)

        with ThreadPoolExecutor(6) as pool:
            rs = list(pool.map(ask, range(6)))
        codes = sorted(r.status_code for r in rs)
        assert set(codes) <= {200, 429} and 200 in codes and 429 in codes, codes
        busy = [r for r in rs if r.status_code == 429][0]
        assert busy.headers["retry-after"] == "2" and "generations are running" in busy.json()["message"]
        ready = httpx.get(f"{s.url}/health/ready", timeout=10)
        assert ready.status_code == 200 and ready.json()["busy"] == 0
        assert ask(0).status_code == 200


def test_concurrent_asks_with_a_kv_compressor_equal_sequential_ones(index, gen):
    cfg = make_config(index, kv_compressor="snapkv(ratio=0.5)", max_concurrency=4)
    with Server(create_app(cfg, Pipeline.from_config(cfg, generator=gen))) as s:

        def ask(q: str) -> dict:
            r = httpx.post(f"{s.url}/v1/ask", json={"question": q}, timeout=120)
            assert r.status_code == 200, r.text
            return r.json()

        sequential = [ask(q) for q in QUESTIONS]
        with ThreadPoolExecutor(4) as pool:
            concurrent = list(pool.map(ask, QUESTIONS))
    assert [a["answer"] for a in concurrent] == [a["answer"] for a in sequential]
    assert all(a["kv"]["compressor"] == "snapkv" and a["kv"]["kv_bytes"] < a["kv"]["kv_bytes_full"] for a in concurrent)
