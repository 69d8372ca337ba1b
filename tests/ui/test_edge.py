"""The edge in front of the whole app (the API, Gradio's routes, the player's streams), attacked from outside: the
real app (`ui.app.create_app`, tiny model) behind `ui.server.make_server`, with small limits so the tests reach them.
Raw sockets send what no HTTP client does: a Host of another site, a body that is announced but never comes."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from engine import EngineConfig
from tests.ui.live_server import Live, serving
from ui.app import create_app
from ui.server import EdgeLimits
from ui.state import AppState

JSON_LIMIT = 64 * 1024
UPLOAD_LIMIT = 1024 * 1024
BODY_TIMEOUT_S = 1.0
EDGE = EdgeLimits(body_bytes=JSON_LIMIT, upload_body_bytes=UPLOAD_LIMIT, body_timeout_s=BODY_TIMEOUT_S)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    state = AppState.start(EngineConfig(), runs_dir=tmp_path_factory.mktemp("runs"))
    try:
        with serving(create_app(state), EDGE) as live:
            yield live
    finally:
        state.close()


def answer(live: Live, request: bytes) -> tuple[bytes, float]:
    """What the server sends back on one raw connection until it closes it, and the seconds that took."""
    start = time.monotonic()
    with live.raw(request, timeout=BODY_TIMEOUT_S + 10) as conn:
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    return received, time.monotonic() - start


def first_line_within(live: Live, request: bytes, seconds: float) -> bytes:
    """The status line, which must arrive within `seconds` (the connection is left to close by itself)."""
    with live.raw(request, timeout=seconds) as conn:
        return conn.recv(65536).split(b"\r\n", 1)[0]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost:7860", "[::1]:80", "LOCALHOST"])
def test_loopback_names_are_answered(app: Live, host: str) -> None:
    assert httpx.get(app.url + "/health", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.evil.example", "evil.example:80@127.0.0.1", ""])
def test_another_host_gets_a_plain_400_on_every_route(app: Live, host: str) -> None:
    for path in ("/health", "/v1/models", "/", "/gradio_api/info"):
        response = httpx.get(app.url + path, headers={"host": host})
        assert response.status_code == 400 and response.text == "Bad Request"  # nothing to learn from it


def test_no_host_header_gets_400(app: Live) -> None:
    received, _ = answer(app, b"GET /health HTTP/1.0\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 400")


def test_health_and_ready_are_ours_not_gradios(app: Live) -> None:
    assert httpx.get(app.url + "/health").json() == {"status": "ok"}
    assert httpx.get(app.url + "/ready").json()["status"] == "ready"


def test_a_gradio_json_call_over_its_limit_is_refused(app: Live) -> None:
    body = json.dumps({"data": ["x" * JSON_LIMIT], "fn_index": 0, "session_hash": "s"})
    response = httpx.post(
        app.url + "/gradio_api/queue/join", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_an_announced_body_over_the_limit_is_refused_at_once(app: Live) -> None:
    """50 MB announced, nothing sent: the 413 comes long before the body timeout, not after a drain."""
    for path in (b"/gradio_api/queue/join", b"/gradio_api/upload", b"/v1/audio/speech"):
        request = b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 50000000\r\n\r\n"
        assert first_line_within(app, request, BODY_TIMEOUT_S / 2) == b"HTTP/1.1 413 Request Entity Too Large"


def test_an_upload_may_be_larger_than_a_json_call_but_is_bounded_too(app: Live) -> None:
    def upload(size: int) -> httpx.Response:
        files = {"files": ("clip.wav", io.BytesIO(b"\0" * size), "audio/wav")}
        return httpx.post(app.url + "/gradio_api/upload", files=files)

    accepted = upload(4 * JSON_LIMIT)
    assert accepted.status_code == 200, accepted.text
    assert upload(2 * UPLOAD_LIMIT).status_code == 413


def test_a_body_that_stops_arriving_gets_408_and_the_connection_is_closed(app: Live) -> None:
    request = b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n" + b'{"input": "'
    received, seconds = answer(app, request)
    assert received.startswith(b"HTTP/1.1 408") and b"stopped arriving" in received
    assert BODY_TIMEOUT_S <= seconds < BODY_TIMEOUT_S + 5  # answered after the timeout, then closed (recv got b"")


def test_a_request_with_its_whole_body_is_not_held_by_the_timeout(app: Live) -> None:
    start = time.monotonic()
    response = httpx.post(app.url + "/v1/audio/speech", json={"input": ""})
    assert response.status_code == 400 and time.monotonic() - start < BODY_TIMEOUT_S


def test_a_hung_connection_does_not_hold_others(app: Live) -> None:
    with socket.create_connection(("127.0.0.1", app.port)) as hung:
        hung.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n")
        assert httpx.get(app.url + "/health", timeout=BODY_TIMEOUT_S / 2).status_code == 200
