"""The HTTP server: a FastAPI app with the speech API under /v1 and /health, /ready, onto which the Gradio app is
mounted at "/", served by uvicorn behind the edge (`ui.edge`).

    app = create_server(engine, ApiLimits())
    app = gradio.mount_gradio_app(app, blocks, path="/")   # after the API routes, so /v1/* stays ours
    serve(app, ServeConfig(port=7860), on_shutdown=engine.close)   # 127.0.0.1 unless told otherwise

Every error under /v1 is OpenAI's JSON shape (`ui.api.ApiError`), with a 4xx status and `param` naming the field, or a
5xx with a short message: no traceback, server path or internal name reaches a client, and the log has one line per
refused request with its id (and a traceback only for a bug of ours).

On SIGTERM or SIGINT the server stops accepting connections and at once runs `on_shutdown` (which closes the engine:
streams in flight end with an error, workers exit, shared memory is unlinked), while requests and streams get up to
`ServeConfig.grace_s` to finish before they are cut.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from engine import Engine
from ui.api import ApiError, ApiLimits, SpeechApi
from ui.edge import API_PREFIX, REQUEST_ID_HEADER, Edge, EdgeLimits, log_error, request_id
from ui.health import health_router
from ui.voices import VoiceLibrary
from ui.voices_api import VoicesApi

__all__ = ["ApiLimits", "EdgeLimits", "ServeConfig", "Server", "create_server", "make_server", "serve"]

log = logging.getLogger("voxtrace.http")


def create_server(
    engine: Engine, limits: ApiLimits | None = None, voices: VoiceLibrary | None = None, others: Sequence[Engine] = ()
) -> FastAPI:
    """The API app over `engine` and the engines of other tasks in `others` (the caller owns and closes them all),
    with the voice routes over `voices` (the app's saved voices) when given. `app.state.api` is the `SpeechApi`."""
    limits = limits or ApiLimits()
    app = FastAPI(title="Voxtrace", docs_url="/v1/docs", openapi_url="/v1/openapi.json", redoc_url=None)
    api = SpeechApi(engine, limits, voices, others)
    app.state.api = api
    if voices is not None:  # before the speech API's catch-all under /v1
        app.include_router(VoicesApi(voices, engine).router)
    app.include_router(api.router)
    app.include_router(health_router(engine, others))
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    return app


@dataclass
class ServeConfig:
    """Where and how the app is served."""

    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 7860  # 0: any free port (uvicorn's start-up line says which)
    grace_s: float = 10.0  # after SIGTERM / SIGINT: how long requests and streams get before they are cut
    close_margin_s: float = 5.0  # past the grace: how long closing may still take (killing workers) before we exit
    edge: EdgeLimits = field(default_factory=EdgeLimits)
    log_level: str = "info"

    def __post_init__(self) -> None:
        for name in ("grace_s", "close_margin_s"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {getattr(self, name)}")


class Server(uvicorn.Server):
    """uvicorn's server, which runs `on_shutdown` (once) as soon as its graceful shutdown begins, and says when it is
    up (`up`, an event to wait on from another thread)."""

    def __init__(self, config: uvicorn.Config, serve: ServeConfig, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self.serve_config, self.on_shutdown = serve, on_shutdown
        self.up = threading.Event()  # set once start-up is over, bound or not (`started` says which)
        self._closer: threading.Thread | None = None
        self._lock = threading.Lock()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.up.set()

    def close_app(self) -> threading.Thread:
        """Start `on_shutdown` in a thread of its own (the event loop goes on serving the streams it ends)."""
        with self._lock:
            if self._closer is None:
                self._closer = threading.Thread(target=self.on_shutdown, name="on-shutdown", daemon=True)
                self._closer.start()
            return self._closer

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        bound = self.serve_config.grace_s + self.serve_config.close_margin_s
        deadline = time.monotonic() + bound
        closer = self.close_app()
        await super().shutdown(sockets)  # stops accepting at once, then waits up to grace_s for connections
        await asyncio.to_thread(closer.join, max(0.0, deadline - time.monotonic()))
        if closer.is_alive():
            log.warning("shutdown: closing the app did not finish within %.0f s; exiting anyway", bound)


def make_server(app: ASGIApp, config: ServeConfig, on_shutdown: Callable[[], None] = lambda: None) -> Server:
    """`app` behind the edge, as a uvicorn server. No access log: the player's streams and Gradio's polls would flood
    it; each refused request has its own line."""
    uv = uvicorn.Config(
        Edge(app, config.edge),
        host=config.host,
        port=config.port,
        log_config=log_config(config.log_level),
        log_level=config.log_level,
        access_log=False,
        timeout_graceful_shutdown=config.grace_s,
    )
    return Server(uv, config, on_shutdown)


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, with our `voxtrace.*` lines (one per refused request) printed the same way as its own."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["voxtrace"] = {"handlers": ["default"], "level": level.upper()}
    return config


def serve(app: ASGIApp, config: ServeConfig, on_shutdown: Callable[[], None] = lambda: None) -> None:
    """Serve `app` until SIGTERM or SIGINT; `on_shutdown` runs once, also when the server fails to start. uvicorn's
    own lines say when the port is bound (or why not)."""
    server = make_server(app, config, on_shutdown)
    try:
        server.run()
    finally:
        server.close_app().join(config.grace_s + config.close_margin_s)


def _json(error: ApiError, request: Request) -> Response:
    headers = {**error.headers, REQUEST_ID_HEADER: request_id(request.scope)}
    return Response(error.content(), status_code=error.status, headers=headers, media_type="application/json")


def _refused(error: ApiError, request: Request) -> Response:
    log_error(request.scope, error.status, error.for_log())
    return _json(error, request)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _refused(exc, request)


async def _validation_error(request: Request, exc: Exception) -> Response:
    """pydantic's first complaint, as a 400 naming the top-level field (the body's fields are all top-level)."""
    assert isinstance(exc, RequestValidationError)
    if not request.url.path.startswith(API_PREFIX):  # other routes on this app keep FastAPI's answers
        return await request_validation_exception_handler(request, exc)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [str(part) for part in first.get("loc", ())]
    if loc and loc[0] == "body":
        loc = loc[1:]
    kind = first.get("type", "")
    param = loc[0] if loc and kind != "json_invalid" else None
    if kind == "json_invalid":
        message = f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}"
    elif kind == "missing":
        message = f"{param}: this field is required"
    elif kind == "extra_forbidden":
        message = f"{param}: unknown field"
    elif param is None:
        message = f"the body must be a JSON object: {first['msg']}"
    else:
        message = f"{param}: {first['msg']}"
    return _refused(ApiError(400, message, param, kind or "invalid_value"), request)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if not request.url.path.startswith(API_PREFIX):
        return await http_exception_handler(request, exc)
    code = "not_found" if exc.status_code == 404 else None
    return _refused(ApiError(exc.status_code, str(exc.detail), code=code), request)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    """A bug of ours: its traceback goes to the log, once; the client gets a bare 500 and the request id."""
    log.error("%s: unexpected error on %r", request_id(request.scope), request.url.path, exc_info=exc)
    if not request.url.path.startswith(API_PREFIX):
        return PlainTextResponse("Internal Server Error", status_code=500)
    return _json(ApiError(500, "internal error", code="internal_error", kind="server_error"), request)
