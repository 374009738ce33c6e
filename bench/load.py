"""Bounded load on the QA service, on 127.0.0.1 only: N concurrent clients x M requests each.

Phase ``search``: ``GET /v1/search`` (latency p50/p95, errors). Phase ``ask``: ``POST /v1/ask`` with more
clients than the service's concurrency cap (status counts: only 200 and 429 are allowed; ``/health/ready`` after).
Without ``--url`` the script builds the service from ``--config`` (plus ``--index``/``--model``) and runs it with
uvicorn in this process; with ``--url`` it loads a server already running (loopback addresses only). Every
request has a timeout; the run has a deadline (``--max-seconds``).

    python -m bench.load --config ragcore.toml --clients 32 --requests 20 --ask-clients 8 --ask-requests 2 \
        --write-results service-load
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import statistics
import threading
import time
from typing import Any
from urllib.parse import urlparse

import httpx

QUESTIONS = [
    "Who discovered the four largest moons of Jupiter?",
    "Which planet has the tallest volcano?",
    "What causes the tides?",
    "How many rings does Saturn have?",
]


def loopback(url: str) -> str:
    host = urlparse(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise SystemExit(f"bench.load: --url must be a loopback address (127.0.0.1, ::1, localhost), got {url!r}")
    return url.rstrip("/")


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


async def phase(url: str, clients: int, requests: int, call: Any, deadline: float, timeout: float) -> dict[str, Any]:
    """``clients`` tasks each send ``requests`` requests one after another; latencies in ms and status counts."""
    lat: list[float] = []
    status: dict[str, int] = {}

    async def client(i: int, http: httpx.AsyncClient) -> None:
        for j in range(requests):
            if time.monotonic() > deadline:
                status["not sent (deadline)"] = status.get("not sent (deadline)", 0) + 1
                continue
            t0 = time.perf_counter()
            try:
                r = await call(http, i * requests + j)
                key = str(r.status_code)
            except httpx.HTTPError as e:
                key = type(e).__name__
            lat.append(1000 * (time.perf_counter() - t0))
            status[key] = status.get(key, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "requests": clients * requests,
        "status": dict(sorted(status.items())),
        "p50_ms": statistics.median(lat) if lat else float("nan"),
        "p95_ms": percentile(lat, 0.95),
        "max_ms": max(lat) if lat else float("nan"),
        "per_s": len(lat) / wall if wall > 0 else 0.0,
        "seconds": wall,
    }


async def run(a: argparse.Namespace, url: str) -> dict[str, Any]:
    deadline = time.monotonic() + a.max_seconds

    def search(http: httpx.AsyncClient, n: int) -> Any:
        return http.get("/v1/search", params={"q": QUESTIONS[n % len(QUESTIONS)], "top_k": 5})

    def ask(http: httpx.AsyncClient, n: int) -> Any:
        return http.post(
            "/v1/ask", json={"question": QUESTIONS[n % len(QUESTIONS)], "max_new_tokens": a.max_new_tokens}
        )

    out = {"search": await phase(url, a.clients, a.requests, search, deadline, a.timeout)}
    if a.ask_clients:
        out["ask"] = await phase(url, a.ask_clients, a.ask_requests, ask, deadline, a.timeout)
    async with httpx.AsyncClient(base_url=url, timeout=a.timeout) as http:
        ready = await http.get("/health/ready")
    out["ready_after"] = ready.status_code
    out["max_concurrency"] = ready.json().get("max_concurrency")
    return out


def table(res: dict[str, Any]) -> str:
    rows = [
        "| endpoint | clients x requests | status counts | p50 ms | p95 ms | max ms | requests/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, path in (("search", "GET /v1/search"), ("ask", "POST /v1/ask")):
        if name in res:
            r = res[name]
            counts = ", ".join(f"{k}: {v}" for k, v in r["status"].items())
            rows.append(
                f"| {path} | {r['clients']} x {r['requests'] // r['clients']} | {counts} | {r['p50_ms']:.0f} | "
                f"{r['p95_ms']:.0f} | {r['max_ms']:.0f} | {r['per_s']:.1f} |"
            )
    rows.append("")
    rows.append(
        f"`/health/ready` after the run: {res['ready_after']}; the service's concurrency cap: {res['max_concurrency']} "
        "generations (more are answered 429 with Retry-After). Errors are any status but 200 (search) or 200/429 (ask)."
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="a running server on a loopback address (default: start one here)")
    p.add_argument("--config", default=None, help="pipeline config (TOML) for the server started here")
    p.add_argument("--index", default=None, help="index folder (overrides the config's)")
    p.add_argument("--model", default=None, help="generator (overrides the config's)")
    p.add_argument("--max-concurrency", type=int, default=None, help="the server's generation cap (overrides)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=20, help="requests per client")
    p.add_argument("--ask-clients", type=int, default=8, help="0: skip the ask phase")
    p.add_argument("--ask-requests", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--max-seconds", type=float, default=600.0, help="the whole run's deadline")
    p.add_argument("--write-results", default=None, metavar="SECTION", help="write a docs/RESULTS.md section")
    a = p.parse_args(argv)
    for name in ("clients", "requests", "ask_requests"):
        if not 1 <= getattr(a, name) <= 1000:
            p.error(f"--{name.replace('_', '-')} must be in [1, 1000], got {getattr(a, name)}")
    server = None
    if a.url is not None:
        url = loopback(a.url)
    else:
        import socket

        import uvicorn

        from ragcore.config import PipelineConfig
        from serve.app import create_app

        over = {"index": a.index, "generator": a.model, "max_concurrency": a.max_concurrency}
        cfg = PipelineConfig.load(a.config, **over)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        t0 = time.time()
        while not server.started:
            if time.time() - t0 > 300 or not thread.is_alive():
                raise SystemExit("bench.load: the server did not start")
            time.sleep(0.1)
    try:
        res = asyncio.run(run(a, url))
    finally:
        if server is not None:
            server.should_exit = True
    print(table(res))
    if a.write_results:
        from bench.results import write_section

        write_section(a.write_results, "Service load (bench.load)", table(res))
    bad = sum(v for k, v in res["search"]["status"].items() if k != "200")
    if "ask" in res:
        bad += sum(v for k, v in res["ask"]["status"].items() if k not in ("200", "429"))
    return 0 if bad == 0 and res["ready_after"] == 200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
