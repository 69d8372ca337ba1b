"""The server's edge: what every request passes before any route sees it (the HTTP API, Gradio's routes and the
player's streams alike). `ui.server.make_server` wraps the whole app in it:

    app = Edge(create_app(app_state), EdgeLimits(allowed_hosts=("127.0.0.1", "localhost", "[::1]")))

- each request gets an id in its ASGI scope's state (`request_id(scope)`), so every log line about it names it;
- the Host header must be on an allowlist (a page elsewhere whose name resolves to 127.0.0.1 must not reach a
  loopback server: DNS rebinding); a wrong Host gets a plain 400 that says nothing more;
- the body is bounded per route family before the app reads a byte of it: a declared Content-Length over the limit
  gets 413 at once, a chunked body is counted as it arrives, and a body that stops arriving gets 408 after
  `body_timeout_s`; either way the connection is then closed;
- an exception that escapes the app never reaches the client (the app's own handler has logged it).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ui.api_schema import ApiError

__all__ = ["LOOPBACK_HOSTS", "REQUEST_ID_HEADER", "Edge", "EdgeLimits", "log_error", "request_id"]

log = logging.getLogger("voxtrace.http")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
ANY_HOST = "*"
API_PREFIX = "/v1/"
UPLOAD_PATHS = frozenset({"/gradio_api/upload", "/gradio_api/process_recording"})  # Gradio's multipart uploads
REQUEST_ID_HEADER = "x-voxtrace-request-id"


@dataclass(frozen=True)
class EdgeLimits:
    """What every request must respect. Bodies are bounded per route family: the speech API (a reference clip as
    base64), Gradio's uploads (a clip as a file) and everything else (Gradio's JSON calls, which carry file
    references, never files)."""

    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS  # Host header names, any port; ("*",) accepts any Host
    api_body_bytes: int = 10 * 2**20  # under /v1/
    upload_body_bytes: int = 25 * 2**20  # UPLOAD_PATHS: a 20 MB clip plus its multipart framing
    body_bytes: int = 2**20  # every other route
    body_timeout_s: float = 10.0  # the longest wait for the next piece of a body (as nginx's client_body_timeout)
    drain_factor: int = 4  # a refused body is still read and dropped up to this many times its limit

    def __post_init__(self) -> None:
        if not self.allowed_hosts:
            raise ValueError("allowed_hosts is empty: name the Host headers to accept, or '*' for any")
        for name in ("api_body_bytes", "upload_body_bytes", "body_bytes"):
            if getattr(self, name) < 1024:
                raise ValueError(f"{name} must be >= 1024, got {getattr(self, name)}")
        if self.body_timeout_s <= 0:
            raise ValueError(f"body_timeout_s must be > 0, got {self.body_timeout_s}")
        if self.drain_factor < 1:
            raise ValueError(f"drain_factor must be >= 1, got {self.drain_factor}")

    def body_limit(self, path: str) -> int:
        if path.startswith(API_PREFIX):
            return self.api_body_bytes
        return self.upload_body_bytes if path in UPLOAD_PATHS else self.body_bytes

    def allows(self, host_header: str | None) -> bool:
        """Whether a request's Host header names this server: the name without its port, on the allowlist."""
        if ANY_HOST in self.allowed_hosts:
            return True
        if not host_header:
            return False
        host = host_header.strip().lower()
        name = host[: host.find("]") + 1] if host.startswith("[") else host.split(":", 1)[0]
        return name in {allowed.lower() for allowed in self.allowed_hosts}


def request_id(scope: Scope) -> str:
    """The request's id: given by the edge, or on first use by whoever asks (an app served without the edge)."""
    state = scope.setdefault("state", {})
    if "request_id" not in state:
        state["request_id"] = uuid.uuid4().hex[:12]
    return state["request_id"]


def log_error(scope: Scope, status: int, message: str) -> None:
    """The one log line of a request that ends in an error: its id, method, path, status and why (client text made
    printable, on one line)."""
    why = message.encode("ascii", "backslashreplace").decode().replace("\n", "\\n").replace("\r", "\\r")
    level = logging.WARNING if status >= 500 else logging.INFO
    log.log(level, "%s %s %r -> %d %s", request_id(scope), scope.get("method", "?"), scope["path"], status, why)


class _BodyRefused(Exception):
    def __init__(self, status: int, message: str, code: str, received: int) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.received = status, message, code, received


class Edge:
    """The ASGI middleware around the whole server (see the module's docstring)."""

    def __init__(self, app: ASGIApp, limits: EdgeLimits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return
        request_id(scope)
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if not self.limits.allows(host):
            log_error(scope, 400, f"Host {host!r} is not on the allowlist")
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await _respond(scope, send, 400, b"Bad Request", "text/plain; charset=utf-8")
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read_body(scope, receive)
        except _BodyRefused as refused:
            log_error(scope, refused.status, refused.message)
            await self._refuse(scope, receive, send, refused)
            return
        if body is None:
            return  # the client went away while sending
        await self._run(scope, _replay(body, receive), send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, bounded in size and in the wait for each piece; None if the client went away."""
        limit = self.limits.body_limit(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and not declared.isdigit():
            raise _BodyRefused(400, "the Content-Length header is not a number", "invalid_value", 0)
        if declared is not None and int(declared) > limit:
            raise _BodyRefused(
                413,
                f"the request body ({int(declared)} bytes) is over the limit of {limit} bytes",
                "request_too_large",
                0,
            )
        body, more = bytearray(), True
        while more:
            message = await self._next(receive, len(body))
            if message["type"] != "http.request":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                over = f"the request body is over the limit of {limit} bytes"
                raise _BodyRefused(413, over, "request_too_large", len(body))
        return bytes(body)

    async def _next(self, receive: Receive, received: int) -> Message:
        try:
            return await asyncio.wait_for(receive(), self.limits.body_timeout_s)
        except TimeoutError:
            silence = f"the request body stopped arriving ({received} bytes in, then {self.limits.body_timeout_s:g} s)"
            raise _BodyRefused(408, silence, "request_timeout", received) from None

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, refused: _BodyRefused) -> None:
        """The answer goes out whole at once; for a 413 the rest of the body (bounded) is then read and dropped
        before the connection closes, so a client still sending reads the answer rather than a reset."""
        body = ApiError(refused.status, refused.message, code=refused.code).content()
        await _respond(scope, send, refused.status, body, "application/json", finish=False)
        if refused.status == 413:
            budget = self.limits.drain_factor * self.limits.body_limit(scope["path"]) - refused.received
            await self._drain(receive, budget)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _drain(self, receive: Receive, budget: int) -> None:
        more = True
        while more and budget > 0:
            try:
                message = await asyncio.wait_for(receive(), self.limits.body_timeout_s)
            except TimeoutError:
                return
            if message["type"] != "http.request":
                return
            budget -= len(message.get("body", b""))
            more = message.get("more_body", False)

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, with what escapes it kept from the client: a response not yet started becomes a bare 500; one
        already sent or under way is left as it is (an unfinished one makes the server close the connection)."""
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if started:
                return  # the app's exception handler has logged it
            log.exception("%s: unexpected error on %r", request_id(scope), scope["path"])
            body = ApiError(500, "internal error", code="internal_error", kind="server_error").content()
            await _respond(scope, send, 500, body, "application/json")


def _replay(body: bytes, receive: Receive) -> Receive:
    """The buffered body as one message, then the client's own messages (http.disconnect when it goes away)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _respond(scope: Scope, send: Send, status: int, body: bytes, content_type: str, finish: bool = True) -> None:
    """A whole answer that closes the connection; `finish=False` leaves the body open (no more bytes will come)."""
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        (REQUEST_ID_HEADER.encode(), request_id(scope).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": not finish})
