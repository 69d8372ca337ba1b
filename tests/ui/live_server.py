"""A real server for the HTTP tests: the production stack (`ui.server.make_server`: the edge in front of the app,
uvicorn) in a thread, on a socket bound here (port 0: no race for a free port), stopped cleanly."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fastapi import FastAPI

from engine import Engine
from ui.server import EdgeLimits, ServeConfig, make_server


@dataclass
class Live:
    """A server running in a thread, and what the tests look at behind it."""

    url: str
    port: int
    app: FastAPI

    @property
    def engine(self) -> Engine:
        return self.app.state.api.engine

    @property
    def in_flight(self) -> int:
        return self.app.state.api.gate.in_flight

    def wait_idle(self, timeout: float = 10.0) -> float:
        """Seconds until no request is left in the API or the talker (fails past `timeout`)."""
        start = time.monotonic()
        while self.in_flight or self.engine.router.requests_in("talker"):
            assert time.monotonic() - start < timeout, "the server did not free the request"
            time.sleep(0.01)
        return time.monotonic() - start

    def raw(self, request: bytes, timeout: float = 10.0) -> socket.socket:
        """A connection that has sent `request` as it is (for what no HTTP client sends: a body that never comes)."""
        conn = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        conn.sendall(request)
        return conn


@contextmanager
def serving(app: FastAPI, edge: EdgeLimits | None = None) -> Iterator[Live]:
    """`app` (from `ui.server.create_server`, or `ui.app.create_app` around it) served until the block ends; the
    engine behind it is the caller's to close."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = make_server(app, ServeConfig(edge=edge or EdgeLimits(), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert server.up.wait(60) and server.started, "the server did not start"
        port = sock.getsockname()[1]
        yield Live(f"http://127.0.0.1:{port}", port, app)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
