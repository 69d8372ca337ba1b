"""Stopping `python app.py` (both stages in worker processes) with SIGTERM or SIGINT while a stream is in flight: the
engine is closed within the grace period, so the stream ends (not hangs), the workers exit, the shared-memory rings
are unlinked by us (not left to Python's resource tracker, which warns of leaks), and no child process is left."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from engine.runtime.transport import RING_PREFIX
from tests.app_process import AppProcess
from tests.ui.test_api import clone

GRACE_S = 5.0
MARGIN_S = 10.0  # start of the shutdown, a worker's exit, the interpreter's: generous on a loaded 2-core machine


def our_rings(pid: int) -> list[str]:
    return [p.name for p in Path("/dev/shm").glob(f"{RING_PREFIX}{pid}_*")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_closes_everything_within_the_grace_period(sig: signal.Signals) -> None:
    with AppProcess("--config", "configs/tiny-mp-mp.yaml", "--port", "0", "--grace-s", str(GRACE_S)) as app:
        url = app.serving_url()
        children = psutil.Process(app.pid).children(recursive=True)
        # the tiny model's three serving engines (a task each): two workers each, a ring each way for each worker
        assert len(children) >= 6 and len(our_rings(app.pid)) == 12
        body = clone(max_new_tokens=2000, stream=True, response_format="pcm")
        with httpx.stream("POST", url + "/v1/audio/speech", json=body, timeout=GRACE_S + MARGIN_S) as response:
            assert response.status_code == 200, response.read()
            chunks = response.iter_raw()
            next(chunks)  # audio is flowing
            os.kill(app.pid, sig)
            sent = time.monotonic()
            try:
                for _ in chunks:
                    pass
            except httpx.TimeoutException:
                pytest.fail("the stream hung after the signal")
            except httpx.HTTPError:
                pass  # cut: the response never finished, so the client knows its audio is incomplete
        assert time.monotonic() - sent < GRACE_S + MARGIN_S
        app.wait_exit(GRACE_S + MARGIN_S)
        assert time.monotonic() - sent < GRACE_S + MARGIN_S
    gone, alive = psutil.wait_procs(children, timeout=MARGIN_S)  # the resource tracker goes when its parent does
    assert alive == []
    assert our_rings(app.pid) == []
    assert "leaked shared_memory" not in app.stderr and "Traceback" not in app.stderr, app.stderr
