"""The QA service: a FastAPI app over one :class:`ragcore.pipeline.Pipeline`, built by ``create_app(config)``.

Endpoints (JSON unless said): ``POST /v1/ask`` (answer, citations, flags, stage report), ``POST /v1/ask/stream``
(server-sent events ``retrieval``, ``token``, ``citation``, ``done``, ``error``), ``POST /v1/documents`` (add or
replace sources: text, or a file's bytes in base64), ``DELETE /v1/documents/{source_id}``, ``GET /v1/search``,
``GET /health/live``, ``GET /health/ready``, ``GET /`` (the web page), ``GET /openapi.json``.

Limits (:class:`ragcore.config.PipelineConfig`): request body size (413), question length and ``top_k`` bounds
(422), a token budget checked before generation (422 stating the counts), ``max_concurrency`` generations at
once (more: 429 with ``Retry-After``), a generation time limit (``max_time``: the answer is cut, ``stopped`` says
so). Write endpoints need ``api_key`` when one is set (401; compared in constant time), read endpoints too with
``protect_reads``. Every response carries ``X-Request-ID``; one structured access-log line per request (logger
``serve.access``). Errors are ``{"error": type, "message": ..., "param": ..., "request_id": ...}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ragcore.config import PipelineConfig
from ragcore.errors import (
    ConfigError,
    DocumentError,
    EmptyCorpusError,
    EmptyQueryError,
    IndexLockedError,
    IndexNotFoundError,
    PromptTooLongError,
    RagcoreError,
    SourceNotFoundError,
)
from ragcore.events import ErrorEvent, answer_dict
from ragcore.pipeline import Pipeline

logger = logging.getLogger(__name__)
access = logging.getLogger("serve.access")
PAGE = Path(__file__).with_name("static") / "index.html"


# ---- request and response bodies -----------------------------------------------------------------------------
class AskRequest(BaseModel):
    question: str = Field(..., min_length=1, description="the question; at most max_question_chars characters")
    top_k: int | None = Field(None, ge=1, description="passages retrieved (default: the config's k; at most max_top_k)")
    max_new_tokens: int | None = Field(None, ge=1, description="answer length limit (at most the config's)")


class DocumentIn(BaseModel):
    source_id: str = Field(..., min_length=1, max_length=1000, description="the source's id in the index")
    text: str | None = Field(None, description="the document's text")
    content_base64: str | None = Field(None, description="a file's bytes in base64, read as filename's type")
    filename: str | None = Field(None, max_length=1000, description="with content_base64: .txt .md .html .pdf ...")


class DocumentsRequest(BaseModel):
    documents: list[DocumentIn] = Field(..., min_length=1, max_length=1000)


class ErrorBody(BaseModel):
    error: str
    message: str
    param: str | None = None
    request_id: str | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": why}
    for code, why in {
        401: "API key missing or wrong",
        404: "no such source",
        409: "the index is busy or would be left empty",
        413: "request body too large",
        422: "invalid input (or over the token budget)",
        429: "too many generations at once; retry after Retry-After seconds",
        503: "not ready",
    }.items()
}


class HTTPError(Exception):
    def __init__(self, status: int, error: str, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.error, self.message, self.param, self.headers = status, error, message, param, headers


def status_of(e: RagcoreError) -> int:
    """The HTTP status of a library error: what the client can fix is 4xx."""
    if isinstance(e, SourceNotFoundError):
        return 404
    if isinstance(e, (IndexLockedError, EmptyCorpusError)):
        return 409
    if isinstance(e, IndexNotFoundError):
        return 503
    if isinstance(e, (ConfigError, EmptyQueryError, PromptTooLongError, DocumentError)):
        return 422
    return 500


class Slots:
    """At most ``n`` generations at once; ``try_take`` never waits (the caller answers 429 instead)."""

    def __init__(self, n: int) -> None:
        self.n, self.busy, self._lock = n, 0, threading.Lock()

    def try_take(self) -> bool:
        with self._lock:
            if self.busy >= self.n:
                return False
            self.busy += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.busy -= 1


class BodyLimit:
    """ASGI middleware: refuse a body over ``limit`` bytes with 413 (by Content-Length, or as it streams in)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_big = JSONResponse(
            {"error": "BodyTooLarge", "message": f"request body over the limit of {self.limit} bytes", "param": None},
            status_code=413,
        )
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await too_big(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                raise HTTPError(413, "BodyTooLarge", f"request body over the limit of {self.limit} bytes")
            return msg

        await self.app(scope, counted, send)


def create_app(config: PipelineConfig | None = None, pipeline: Pipeline | None = None) -> FastAPI:
    """The service for ``config`` (default: from the environment). Models load once, in the lifespan (the app
    is ready when ``/health/ready`` says so). ``pipeline``: a ready pipeline to serve instead of building one from
    the config (the config's limits still apply)."""
    cfg = config or PipelineConfig.load()
    state: dict[str, Any] = {"pipeline": pipeline, "error": None}
    slots = Slots(cfg.max_concurrency)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        def load() -> None:
            p = state["pipeline"] or Pipeline.from_config(cfg)
            p.warm_up()
            state["pipeline"] = p

        try:
            await asyncio.to_thread(load)
        except RagcoreError as e:  # the app still serves /health/*: not ready, and why
            state["error"] = str(e)
            logger.error("pipeline not loaded: %s", e)
        yield

    app = FastAPI(
        title="ragcore",
        version="1",
        lifespan=lifespan,
        description="Question answering with citations over a hybrid index (see serve/app.py).",
    )

    def current() -> Pipeline:
        p = state["pipeline"]
        if p is None:
            raise HTTPError(503, "NotReady", state["error"] or "the pipeline is still loading")
        return p

    def check_key(request: Request) -> None:
        if cfg.api_key is None:
            return
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:]
        want = cfg.api_key.get_secret_value()
        if not hmac.compare_digest(given.encode(), want.encode()):
            raise HTTPError(
                401,
                "Unauthorized",
                "missing or wrong API key (header X-API-Key or Authorization: Bearer)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def check_read(request: Request) -> None:
        if cfg.protect_reads:
            check_key(request)

    def checked(body: AskRequest) -> Pipeline:
        """The request's pipeline after the checks that need no generation: length, top_k, token budget."""
        q = body.question
        if len(q) > cfg.max_question_chars:
            raise HTTPError(
                422, "QuestionTooLong", f"question has {len(q)} characters; the limit is {cfg.max_question_chars}",
                "question",
            )  # fmt: skip
        if not q.strip():
            raise HTTPError(422, "EmptyQuery", f"question must contain text, got {q!r}", "question")
        k = cfg.k if body.top_k is None else body.top_k
        if k > cfg.max_top_k:
            raise HTTPError(422, "TopKTooLarge", f"top_k must be at most {cfg.max_top_k}, got {k}", "top_k")
        new = cfg.max_new_tokens if body.max_new_tokens is None else body.max_new_tokens
        if new > cfg.max_new_tokens:
            raise HTTPError(
                422, "TooManyTokens", f"max_new_tokens must be at most {cfg.max_new_tokens}, got {new}",
                "max_new_tokens",
            )  # fmt: skip
        p = current().with_options(k=k, max_new_tokens=new)
        lm = p.generator
        budget = min(lm.context_window, cfg.max_prompt_tokens or lm.context_window)
        alone = len(lm.prompt(q, []))
        if alone + new > budget:
            raise HTTPError(
                422,
                "TokenBudgetExceeded",
                f"the question takes {alone} tokens and the answer up to {new}: {alone + new} tokens, over the "
                f"budget of {budget} tokens",
                "question",
            )
        return p

    def take_slot() -> None:
        if not slots.try_take():
            raise HTTPError(
                429,
                "TooManyRequests",
                f"{cfg.max_concurrency} generations are running; retry in {cfg.retry_after_s} s",
                headers={"Retry-After": str(cfg.retry_after_s)},
            )

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, e: HTTPError) -> JSONResponse:
        return error_response(request, e.status, e.error, e.message, e.param, e.headers)

    @app.exception_handler(RagcoreError)
    async def _ragcore_error(request: Request, e: RagcoreError) -> JSONResponse:
        status = status_of(e)
        if status >= 500:
            logger.error("request %s failed: %s", request.state.request_id, e)
        return error_response(request, status, type(e).__name__, str(e), e.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":  # loc is ("body", character offset): say so, not a field
            at = first.get("loc", ("body", "?"))[-1]
            return error_response(request, 422, "InvalidJSON", f"body is not valid JSON (at character {at})", "body")
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
        msg = f"{where}: {first.get('msg')}" + (f", got {first['input']!r:.200}" if "input" in first else "")
        return error_response(request, 422, "InvalidRequest", msg, where)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette(request: Request, e: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own refusals (a body that is not JSON, an unknown path, a method not allowed) in our error shape
        names = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed"}
        return error_response(
            request, e.status_code, names.get(e.status_code, "HTTPError"), str(e.detail), None, e.headers
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        logger.exception("request %s failed", getattr(request.state, "request_id", "?"))
        return error_response(request, 500, "InternalError", f"{type(e).__name__}: {e}")

    @app.middleware("http")
    async def _log(request: Request, call_next: Any) -> Any:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        request.state.request_id = rid
        t0 = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            response.headers["X-Request-ID"] = rid
            return response
        finally:
            access.info(
                json.dumps(
                    {
                        "request_id": rid,
                        "method": request.method,
                        "path": request.url.path,
                        "status": status,
                        "ms": round(1000 * (time.perf_counter() - t0), 1),
                        "client": request.client.host if request.client else None,
                    }
                )
            )

    # ---- endpoints ---------------------------------------------------------------------------------------------
    @app.post("/v1/ask", dependencies=[Depends(check_read)], responses=ERRORS, tags=["qa"])
    async def ask(body: AskRequest) -> dict[str, Any]:
        """Answer a question: ``answer``, ``citations``, ``flags``, ``passages``, ``stages`` (seconds, tokens, KV
        bytes per stage)."""
        p = checked(body)
        take_slot()
        try:
            answer = await p.aask(body.question)
        finally:
            slots.give()
        return answer_dict(answer)

    @app.post(
        "/v1/ask/stream",
        dependencies=[Depends(check_read)],
        responses={**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
        response_class=StreamingResponse,
        tags=["qa"],
    )
    async def ask_stream(body: AskRequest, request: Request) -> StreamingResponse:
        """Answer as server-sent events: ``retrieval``, ``token`` (many), ``citation``, ``done`` (the answer as
        ``/v1/ask`` gives it); ``error`` if it fails after the stream began."""
        p = checked(body)
        take_slot()

        async def events() -> AsyncIterator[str]:
            try:
                async for ev in p.astream(body.question):
                    yield sse(ev.type, ev.to_dict())
            except RagcoreError as e:
                yield sse("error", ErrorEvent(type(e).__name__, str(e), e.param).to_dict())
            except Exception as e:  # noqa: BLE001 - the stream has begun: report, do not raise
                logger.exception("stream %s failed", request.state.request_id)
                yield sse("error", ErrorEvent("InternalError", f"{type(e).__name__}: {e}").to_dict())
            finally:
                slots.give()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/search", dependencies=[Depends(check_read)], responses=ERRORS, tags=["qa"])
    async def search(
        q: str = Query(..., min_length=1, description="the query"),
        top_k: int = Query(5, ge=1, description="results (at most max_top_k)"),
    ) -> dict[str, Any]:
        """The passages the retriever finds for ``q``, with their scores."""
        if len(q) > cfg.max_question_chars:
            raise HTTPError(
                422, "QuestionTooLong", f"q has {len(q)} characters; the limit is {cfg.max_question_chars}", "q"
            )
        if top_k > cfg.max_top_k:
            raise HTTPError(422, "TopKTooLarge", f"top_k must be at most {cfg.max_top_k}, got {top_k}", "top_k")
        if not q.strip():
            raise HTTPError(422, "EmptyQuery", f"q must contain text, got {q!r}", "q")
        retriever = current().retriever
        results = await asyncio.to_thread(retriever.retrieve, q, top_k)
        return {"query": q, "results": [r.to_dict() for r in results]}

    @app.post("/v1/documents", dependencies=[Depends(check_key)], responses=ERRORS, tags=["documents"])
    async def add_documents(body: DocumentsRequest) -> dict[str, Any]:
        """Add or replace sources (text, or a file in base64 with its filename); the index is written as one new
        version, atomically, under its writer lock. Returns the counts and the new version."""
        docs = []
        for i, d in enumerate(body.documents):
            if (d.text is None) == (d.content_base64 is None):
                raise HTTPError(
                    422, "InvalidDocument", f"documents.{i}: give text or content_base64, one of them", "documents"
                )
            if d.text is not None:
                docs.append({"source_id": d.source_id, "text": d.text})
                continue
            try:
                data = base64.b64decode(d.content_base64, validate=True)
            except (binascii.Error, ValueError):
                raise HTTPError(
                    422, "InvalidDocument", f"documents.{i}.content_base64 is not base64", "documents"
                ) from None
            docs.append({"source_id": d.source_id, "data": data, "filename": d.filename or d.source_id})
        report = await asyncio.to_thread(current().add_documents, docs)
        return write_result(report)

    @app.delete(
        "/v1/documents/{source_id:path}", dependencies=[Depends(check_key)], responses=ERRORS, tags=["documents"]
    )
    async def remove_document(source_id: str) -> dict[str, Any]:
        """Remove a source from the index (a new version, atomically)."""
        report = await asyncio.to_thread(current().remove_source, source_id)
        return write_result(report)

    @app.get("/health/live", tags=["health"])
    async def live() -> dict[str, str]:
        """The process answers."""
        return {"status": "live"}

    @app.get("/health/ready", tags=["health"], responses={503: ERRORS[503]})
    async def ready() -> JSONResponse:
        """The models are loaded and the index is searchable (503 with the reason otherwise)."""
        p = state["pipeline"]
        if p is None:
            return JSONResponse({"status": "loading", "error": state["error"]}, status_code=503)
        return JSONResponse(
            {
                "status": "ready",
                "generator": p.generator.model_name,
                "chunks": len(p.retriever) if hasattr(p.retriever, "__len__") else None,
                "busy": slots.busy,
                "max_concurrency": cfg.max_concurrency,
            }
        )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    app.state.config, app.state.slots, app.state.pipeline_state = cfg, slots, state
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    return app


def error_response(
    request: Request, status: int, error: str, message: str, param: str | None = None, headers: dict | None = None
) -> JSONResponse:
    rid = getattr(request.state, "request_id", None)
    body = {"error": error, "message": message, "param": param, "request_id": rid}
    return JSONResponse(body, status_code=status, headers=headers)


def sse(event: str, data: dict[str, Any]) -> str:
    """One server-sent event: its name and its data as one line of JSON."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def write_result(report: Any) -> dict[str, Any]:
    return {
        "version": report.version,
        "written": report.written,
        "counts": report.counts(),
        "chunks_added": report.chunks_added,
        "chunks_total": report.chunks_total,
        "skipped": [s.to_dict() for s in report.skipped],
    }
