"""The HTTP server: a FastAPI app with the speech API under /v1, onto which the Gradio app is mounted at "/".

    app = create_server(engine, ApiLimits())
    app = gradio.mount_gradio_app(app, blocks, path="/")   # after the API routes, so /v1/* stays ours
    serve(app, port=7860)                                  # 127.0.0.1 unless told otherwise

Every error under /v1 is OpenAI's JSON shape (`ui.api.ApiError`), with a 4xx status and `param` naming the field.
Bodies under /v1 are bounded before they are parsed: a declared Content-Length over the limit is refused at once, and
a chunked body is counted as it arrives.
"""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import Engine
from ui.api import ApiError, ApiLimits, SpeechApi

__all__ = ["ApiLimits", "create_server", "serve"]

log = logging.getLogger("voxtrace.api")
API_PREFIX = "/v1/"


def create_server(engine: Engine, limits: ApiLimits | None = None) -> FastAPI:
    """The API app over `engine` (which the caller owns and closes). `app.state.api` is the `SpeechApi`."""
    limits = limits or ApiLimits()
    app = FastAPI(title="Voxtrace", docs_url="/v1/docs", openapi_url="/v1/openapi.json", redoc_url=None)
    api = SpeechApi(engine, limits)
    app.state.api = api
    app.include_router(api.router)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, prefix=API_PREFIX)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    return app


def serve(app: ASGIApp, host: str = "127.0.0.1", port: int = 7860, log_level: str = "info") -> None:
    """Run `app` with uvicorn until interrupted. Binds to loopback unless `host` says otherwise. uvicorn's own lines
    say when the port is bound (or why not); no access log: the player's streams and Gradio's polls would flood it."""
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


class BodyLimit:
    """413 for a request body over `max_bytes` under `prefix`, before any of it is parsed (ASGI middleware).

    A refused body is still read and dropped, up to `DRAIN_FACTOR` times the limit, so the client (still sending)
    gets the 413 rather than a connection reset; past that the connection is simply closed."""

    DRAIN_FACTOR = 4

    def __init__(self, app: ASGIApp, max_bytes: int, prefix: str) -> None:
        self.app, self.max_bytes, self.prefix = app, max_bytes, prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and not declared.isdigit():
            await _send(scope, send, ApiError(400, "the Content-Length header is not a number", code="invalid_value"))
            return
        # buffered (bounded), then replayed: a chunked body cannot slip past the limit either
        body, size, more = bytearray(), 0, True
        too_large = declared is not None and int(declared) > self.max_bytes
        while more and size <= self.DRAIN_FACTOR * self.max_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away while sending
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            too_large = too_large or size > self.max_bytes
            if not too_large:
                body += chunk
        if too_large:
            shown = declared.decode() if declared is not None else f"at least {size}"
            error = ApiError(
                413,
                f"the request body ({shown} bytes) is over the limit of {self.max_bytes} bytes",
                code="request_too_large",
            )
            await _send(scope, send, error, {"Connection": "close"})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: http.disconnect when the client goes away
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


async def _send(scope: Scope, send: Send, error: ApiError, headers: dict[str, str] | None = None) -> None:
    async def nothing() -> Message:
        return {"type": "http.disconnect"}

    await JSONResponse(error.body(), status_code=error.status, headers=headers)(scope, nothing, send)


def _json(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _json(exc)


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
    return _json(ApiError(400, message, param, kind or "invalid_value"))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if not request.url.path.startswith(API_PREFIX):
        return await http_exception_handler(request, exc)
    return _json(ApiError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path)
    return _json(ApiError(500, f"internal error: {type(exc).__name__}", code="internal_error", kind="server_error"))
