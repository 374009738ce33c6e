"""`ragcore ask --config` and the service give the same answer; `ragcore serve` killed (SIGKILL) during an ingest
loses no document ingested before and leaves the index loadable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from ragcore.cli import main
from retrieval.hybrid import HybridRetriever
from retrieval.indexer import document, ingest
from tests.serve.conftest import KEY, free_port

ROOT = Path(__file__).resolve().parents[2]
Q = "Which moon has a thick atmosphere?"


def write_config(path: Path, index: str) -> Path:
    path.write_text(
        f'index = "{index}"\ngenerator = "smollm2-135m"\ndevice = "cpu"\nk = 2\nmax_new_tokens = 8\napi_key = "{KEY}"\n'
    )
    return path


def test_ragcore_ask_and_the_service_give_the_same_answer(client, config, tmp_path, capsys):
    toml = write_config(tmp_path / "ragcore.toml", config.index)
    assert main(["ask", Q, "--config", str(toml), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    served = client.post("/v1/ask", json={"question": Q, "top_k": 2}).json()
    assert cli["text"] == served["answer"] and cli["text"]
    assert [c["chunk_id"] for c in cli["citations"]] == [c["chunk_id"] for c in served["citations"]]


def test_a_bad_config_is_one_error_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("k = 0\n")
    assert main(["ask", Q, "--config", str(bad)]) == 1
    assert capsys.readouterr().err.startswith(
        "ragcore: error: --config: k: Input should be greater than or equal to 1, got 0"
    )


def test_sigkill_during_an_ingest_loses_nothing(tmp_path):
    index = tmp_path / "index"
    ingest(index, [document("first", "Mercury is the closest planet to the Sun.")])
    toml = write_config(tmp_path / "ragcore.toml", str(index))
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "ragcore.cli", "serve", "--config", str(toml), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        head = {"X-API-Key": KEY}
        ok = httpx.post(f"{url}/v1/documents", headers=head, json={"documents": [{"source_id": "second", "text": "Venus is the hottest planet."}]}, timeout=60)  # fmt: skip
        assert ok.status_code == 200 and ok.json()["written"]
        many = [{"source_id": f"bulk{i}", "text": f"Bulk document {i} about asteroid {i}. " * 40} for i in range(400)]
        outcome: list = []

        def big() -> None:
            try:
                outcome.append(httpx.post(f"{url}/v1/documents", headers=head, json={"documents": many}, timeout=120))
            except httpx.TransportError as e:
                outcome.append(e)

        t = threading.Thread(target=big)
        t.start()
        time.sleep(1.5)  # the ingest is embedding 400 documents
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        t.join(30)
        assert outcome and isinstance(outcome[0], httpx.TransportError), "the ingest finished before the kill"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    r = HybridRetriever.load(index)
    assert {"first", "second"} <= set(r.sources) and len(r) >= 2
    rep, _ = ingest(index, [document("third", "Mars has two small moons.")], lock_timeout=5)  # the lock is free
    assert rep.written and {"first", "second", "third"} <= set(HybridRetriever.load(index).sources)
