"""A running app on 127.0.0.1 (uvicorn in a thread, the tiny model), shared by the client and browser tests because
starting an engine takes seconds."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn

from engine import EngineConfig
from ui.app import create_app
from ui.remotes import ANY, RemoteServers
from ui.state import AppState


@dataclass
class RunningApp:
    url: str
    state: AppState


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def running_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    state = AppState.start(
        EngineConfig(),
        runs_dir=tmp_path_factory.mktemp("runs"),
        data_dir=tmp_path_factory.mktemp("data"),
        remotes=RemoteServers((ANY,)),  # a local app's default (app.py): its visitors are this machine's
    )
    port = free_port()
    config = uvicorn.Config(
        create_app(state), host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.05)
    try:
        yield RunningApp(f"http://127.0.0.1:{port}", state)
    finally:
        server.should_exit = True
        thread.join(30)
        state.close()
