"""One small index and one service per module: SmolLM2 (deep-copied once per module), MiniLM, five documents."""

from __future__ import annotations

import copy
import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient

from ragcore.config import PipelineConfig
from ragcore.pipeline import Pipeline
from retrieval.indexer import document, ingest
from tests.conftest import DOCS

KEY = "s3cret-key"


def make_index(folder) -> str:
    ingest(folder, [document(sid, text) for sid, text in DOCS.items()])
    return str(folder)


def make_config(index: str, **kw) -> PipelineConfig:
    base = dict(index=index, generator="smollm2-135m", device="cpu", k=2, max_new_tokens=8, api_key=KEY)
    return PipelineConfig.load(**{**base, **kw})


@pytest.fixture(scope="module")
def gen(_smol_session):
    return copy.deepcopy(_smol_session)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return make_index(tmp_path_factory.mktemp("index"))


@pytest.fixture(scope="module")
def config(index):
    return make_config(index)


@pytest.fixture(scope="module")
def client(config, gen):
    from serve.app import create_app

    app = create_app(config, Pipeline.from_config(config, generator=gen))
    with TestClient(app) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A uvicorn server in a thread on 127.0.0.1 (a real socket, for concurrency, the browser and load tests)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
