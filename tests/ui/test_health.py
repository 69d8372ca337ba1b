"""/health, /ready and what the API answers while a stage is down or fails: a real server over an engine whose talker
runs in a worker process, which the tests kill (SIGKILL, as the OOM killer would)."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from engine import Engine, EngineConfig
from engine.config import StageConfig
from tests.ui.live_server import Live, serving
from tests.ui.test_api import clone
from ui.server import create_server

LONG = 2000  # frames: tens of seconds of work, so a request is surely in flight when its worker is killed


@pytest.fixture(scope="module")
def mp(checkpoints) -> Iterator[Live]:
    config = EngineConfig(model=str(checkpoints["base"]), talker=StageConfig(executor="mp", threads=1))
    with Engine(config) as engine, serving(create_server(engine)) as live:
        yield live


@pytest.fixture
def client(mp: Live) -> Iterator[httpx.Client]:
    """A client; after the test, the engine is ready again (a killed worker replaced) for the next one."""
    with httpx.Client(base_url=mp.url, timeout=60) as client:
        yield client
        wait_for(lambda: client.get("/ready").status_code == 200, "the talker was not replaced")


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """`condition()` once it is true: a bounded wait on a state the server reports (there is no event to wait on
    from outside the process)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return value


def kill_talker(live: Live) -> None:
    os.kill(live.engine.probe.worker_pids()["talker"], signal.SIGKILL)


def test_health_says_the_process_serves(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_ready_is_503_naming_the_stage_until_its_worker_is_replaced(
    mp: Live, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json() == {
        "status": "ready",
        "stages": {"code2wav": True, "talker": True},
    }
    talker = mp.engine.router.stages["talker"]
    replace = threading.Event()  # the replacement waits for the test, so "down" lasts as long as the test looks
    restart = talker.restart
    monkeypatch.setattr(talker, "restart", lambda *args, **kw: (replace.wait(60), restart(*args, **kw)))
    kill_talker(mp)
    down = wait_for(lambda: (r := client.get("/ready")).status_code == 503 and r, "/ready did not see the death")
    assert down.json() == {"status": "unavailable", "stages": {"code2wav": True, "talker": False}, "down": ["talker"]}
    assert down.headers["retry-after"] == "1"
    for refused in (client.get("/v1/models"), client.post("/v1/audio/speech", json=clone())):
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert error["code"] == "stage_unavailable" and "talker" in error["message"]
    assert client.get("/health").status_code == 200  # alive all along
    replace.set()
    wait_for(lambda: client.get("/ready").status_code == 200, "the talker was not replaced")
    assert client.post("/v1/audio/speech", json=clone(max_new_tokens=3)).status_code == 200


def test_a_worker_that_dies_mid_request_is_a_short_500_and_one_log_line(
    mp: Live, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="voxtrace"), ThreadPoolExecutor(1) as pool:
        answer = pool.submit(client.post, "/v1/audio/speech", json=clone(max_new_tokens=LONG))
        wait_for(lambda: mp.engine.router.requests_in("talker"), "the request did not reach the talker")
        kill_talker(mp)
        response = answer.result(60)
    assert response.status_code == 500
    assert response.json() == {
        "error": {"message": "synthesis failed", "type": "server_error", "param": None, "code": "engine_error"}
    }
    rid = response.headers["x-voxtrace-request-id"]
    lines = [r for r in caplog.records if r.name.startswith("voxtrace") and rid in r.getMessage()]  # the server's
    assert len(lines) == 1 and not lines[0].exc_info
    assert "500" in lines[0].getMessage() and "talker" in lines[0].getMessage()  # why, in the log only
    assert "\n" not in lines[0].getMessage()


def test_a_worker_that_dies_mid_stream_ends_sse_with_a_short_error_event(mp: Live, client: httpx.Client) -> None:
    body = clone(max_new_tokens=LONG, stream_format="sse", response_format="pcm")
    with client.stream("POST", "/v1/audio/speech", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")  # audio is flowing
        kill_talker(mp)
        events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert events[-1] == {
        "type": "error",
        "error": {"message": "synthesis failed", "type": "server_error", "param": None, "code": "engine_error"},
    }
