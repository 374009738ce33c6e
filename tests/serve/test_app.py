"""The service in-process (TestClient; SmolLM2, 8 new tokens): answers, events, writes, limits, errors."""

from __future__ import annotations

import base64
import json

import pytest

from serve.app import create_app
from tests.serve.conftest import KEY, make_config

Q = "Which planet has the tallest volcano?"
AUTH = {"X-API-Key": KEY}


def events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_ask_answers_with_citations_flags_and_stages(client):
    r = client.post("/v1/ask", json={"question": Q, "top_k": 2})
    assert r.status_code == 200 and r.headers["x-request-id"]
    body = r.json()
    assert body["answer"] and body["answer"] == body["text"] and body["flags"] == []
    assert body["citations"] and body["passages"][0]["chunk"]["source_id"] == "mars"
    assert [s["kind"] for s in body["stages"]] == ["retriever", "generator"]
    assert body["stages"][1]["items_out"] <= 8


def test_stream_sends_retrieval_tokens_citations_then_the_same_answer(client):
    r = client.post("/v1/ask/stream", json={"question": Q, "top_k": 2})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    evs = events(r.text)
    kinds = [k for k, _ in evs]
    assert kinds[0] == "retrieval" and kinds[-1] == "done" and "token" in kinds
    assert kinds.index("citation") > max(i for i, k in enumerate(kinds) if k == "token")
    done = evs[-1][1]
    assert "".join(d["text"] for k, d in evs if k == "token").strip() == done["answer"]
    assert done["answer"] == client.post("/v1/ask", json={"question": Q, "top_k": 2}).json()["answer"]
    assert [d for k, d in evs if k == "citation"] == done["citations"]


def test_search_and_documents_round_trip(client):
    assert client.post("/v1/documents", json={"documents": [{"source_id": "pluto", "text": "x"}]}).status_code == 401
    assert client.post("/v1/documents", headers={"X-API-Key": "wrong"}, json={"documents": []}).status_code == 401
    assert client.delete("/v1/documents/mars").status_code == 401
    html = "<html><body><h1>Pluto</h1><p>Pluto is a dwarf planet in the Kuiper belt.</p></body></html>"
    docs = [{"source_id": "pluto", "content_base64": base64.b64encode(html.encode()).decode(), "filename": "p.html"}]
    r = client.post("/v1/documents", headers={"Authorization": f"Bearer {KEY}"}, json={"documents": docs})
    assert r.status_code == 200 and r.json()["counts"]["new"] == 1 and r.json()["written"]
    hit = client.get("/v1/search", params={"q": "dwarf planet in the Kuiper belt", "top_k": 1}).json()["results"][0]
    assert hit["chunk"]["source_id"] == "pluto" and set(hit["scores"]) == {"bm25", "dense", "hybrid"}
    r = client.delete("/v1/documents/pluto", headers=AUTH)
    assert r.status_code == 200 and r.json()["counts"]["removed"] == 1
    r = client.delete("/v1/documents/pluto", headers=AUTH)
    assert r.status_code == 404 and "no source 'pluto'" in r.json()["message"]


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"question": "x" * 2001}, 422, "question has 2001 characters; the limit is 2000"),
        ({"question": Q, "top_k": 21}, 422, "top_k must be at most 20, got 21"),
        ({"question": Q, "top_k": 0}, 422, "top_k: Input should be greater than or equal to 1, got 0"),
        ({"question": "   "}, 422, "question must contain text"),
        ({"question": Q, "max_new_tokens": 9}, 422, "max_new_tokens must be at most 8, got 9"),
        ({"q": Q}, 422, "question: Field required"),
    ],
)
def test_bad_asks_get_a_4xx_with_a_message(client, body, status, needle):
    r = client.post("/v1/ask", json=body)
    assert r.status_code == status and needle in r.json()["message"], r.json()


def test_body_size_and_documents_checks(client):
    r = client.post("/v1/ask", content=b"{" + b" " * 2_000_001 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over the limit of 2000000 bytes" in r.json()["message"]
    bad = {"documents": [{"source_id": "a", "content_base64": "%%%"}]}
    r = client.post("/v1/documents", headers=AUTH, json=bad)
    assert r.status_code == 422 and "not base64" in r.json()["message"]
    both = {"documents": [{"source_id": "a", "text": "t", "content_base64": "dA=="}]}
    assert "one of them" in client.post("/v1/documents", headers=AUTH, json=both).json()["message"]
    exe = {"documents": [{"source_id": "a", "content_base64": "dA==", "filename": "a.exe"}]}
    r = client.post("/v1/documents", headers=AUTH, json=exe)
    assert r.status_code == 422 and "'.exe' is not supported" in r.json()["message"]


def test_token_budget_is_checked_before_generation(index, gen):
    from fastapi.testclient import TestClient

    from ragcore.pipeline import Pipeline

    cfg = make_config(index, max_prompt_tokens=40)
    with TestClient(create_app(cfg, Pipeline.from_config(cfg, generator=gen))) as c:
        r = c.post("/v1/ask", json={"question": "Tell me everything about " + "the planets " * 20})
        msg = r.json()["message"]
        assert r.status_code == 422 and r.json()["error"] == "TokenBudgetExceeded"
        assert "tokens and the answer up to 8:" in msg and "over the budget of 40 tokens" in msg
        assert c.get("/health/ready").json()["busy"] == 0


def test_protected_reads_and_health(index, gen):
    from fastapi.testclient import TestClient

    from ragcore.pipeline import Pipeline

    cfg = make_config(index, protect_reads=True)
    with TestClient(create_app(cfg, Pipeline.from_config(cfg, generator=gen))) as c:
        assert c.get("/v1/search", params={"q": "rings"}).status_code == 401
        assert c.get("/v1/search", params={"q": "rings"}, headers=AUTH).status_code == 200
        assert c.get("/health/live").json() == {"status": "live"}
        assert c.get("/health/ready").json()["status"] == "ready"
        assert "/v1/ask/stream" in c.get("/openapi.json").json()["paths"]
        assert '<form id="ask">' in c.get("/").text


def test_not_ready_without_an_index(tmp_path):
    from fastapi.testclient import TestClient

    cfg = make_config(str(tmp_path / "none"))
    with TestClient(create_app(cfg)) as c:
        r = c.get("/health/ready")
        assert r.status_code == 503 and "no index" in r.json()["error"].lower()
        assert c.post("/v1/ask", json={"question": Q}).status_code == 503


def test_a_body_that_is_not_json_is_named(client):
    r = client.post("/v1/ask", content=b'{"question": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "InvalidJSON" and r.json()["param"] == "body"
    assert "not valid JSON (at character 13)" in r.json()["message"]
