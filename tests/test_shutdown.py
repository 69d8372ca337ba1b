"""Stopping `python app.py` with SIGTERM or SIGINT while a stream is in flight: the engines are closed within the grace
period, so the stream ends (not hangs). With both stages in worker processes (SIGTERM's case), the workers exit, the
shared-memory rings are unlinked by us (not left to Python's resource tracker, which warns of leaks), and no child
process is left. SIGINT's case runs the stages in the app's process: the same shutdown, without six workers to start
(a minute of the suite on 2 cores)."""

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


@pytest.mark.parametrize(
    ("sig", "config", "workers"),
    [(signal.SIGTERM, "configs/tiny-mp-mp.yaml", 6), (signal.SIGINT, "configs/default.yaml", 0)],
    ids=["SIGTERM-mp-mp", "SIGINT-uni-uni"],
)
def test_a_signal_closes_everything_within_the_grace_period(sig: signal.Signals, config: str, workers: int) -> None:
    with AppProcess("--config", config, "--port", "0", "--grace-s", str(GRACE_S)) as app:
        url = app.serving_url()
        children = psutil.Process(app.pid).children(recursive=True)
        # the tiny model's three serving engines (a task each): with mp, two workers each and a ring each way for each
        assert len(children) >= workers and len(our_rings(app.pid)) == 2 * workers
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
