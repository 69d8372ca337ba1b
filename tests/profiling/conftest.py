"""Fixtures shared by the profiling tests: a small hand-made run (for the trace, metrics and figure tests: two
requests, two processes, batched talker steps, transfers that overlap on the transport track, and milestones), and
our HTTP server over a tiny engine (for the benchmark's and Tune's runs against a URL)."""

from __future__ import annotations

import threading
import time

import pytest
import uvicorn

from engine import Engine, EngineConfig
from telemetry import events as ev
from telemetry.events import COUNTER, INSTANT, SPAN, Event, EventBatch, Timeline, merge_timelines
from ui.server import ApiLimits, create_server

MS = 1_000_000  # ns


def sample_run() -> Timeline:
    engine, worker = 100, 200  # pids
    e: list[Event] = []
    for r, t in (("a", 0), ("b", 2)):
        e += [
            Event(INSTANT, ev.ADMITTED, ev.REQUEST, engine, t * MS, 0, r),
            Event(SPAN, ev.PROMPT_PREP, ev.ENGINE, engine, t * MS, 3 * MS, r),
            Event(INSTANT, ev.PROMPT_READY, ev.REQUEST, engine, (t + 3) * MS, 0, r),
        ]
    e.append(Event(SPAN, ev.QUEUE_WAIT, ev.TALKER, worker, 5 * MS, 1 * MS, "b"))
    e.append(
        Event(SPAN, ev.PREFILL, ev.TALKER, worker, 6 * MS, 4 * MS, None, {"batch_size": 2, "requests": ["a", "b"]})
    )
    for r in "ab":
        e.append(Event(INSTANT, ev.PREFILL_START, ev.REQUEST, engine, 6 * MS, 0, r))
    for step in range(4):
        t = (10 + 2 * step) * MS
        e.append(
            Event(SPAN, ev.DECODE_STEP, ev.TALKER, worker, t, 2 * MS, None, {"batch_size": 2, "requests": ["a", "b"]})
        )
        e.append(Event(SPAN, ev.PREDICTOR, ev.TALKER, worker, t + MS, MS // 2, None, {"batch_size": 2}))
    # a's and b's first chunk handed over at once: the two transfers overlap on one track
    e.append(Event(SPAN, ev.SERIALIZE, ev.TRANSPORT, worker, 14 * MS, MS, "a", {"bytes": 512}))
    e.append(Event(SPAN, ev.COPY, ev.TRANSPORT, worker, 14 * MS + MS // 2, MS, "b", {"bytes": 512}))
    e.append(Event(SPAN, ev.HANDOFF, ev.TRANSPORT, engine, 14 * MS, 2 * MS, "a", {"bytes": 512}))
    e.append(Event(SPAN, ev.HANDOFF, ev.TRANSPORT, engine, 15 * MS, 4 * MS, "b", {"bytes": 512}))
    e.append(
        Event(
            SPAN,
            ev.CODE2WAV_DECODE,
            ev.CODE2WAV,
            engine,
            19 * MS,
            3 * MS,
            None,
            {"batch_size": 2, "frames": 8, "requests": ["a", "b"]},
        )
    )
    for r in "ab":
        e += [
            Event(INSTANT, ev.FIRST_CODE_CHUNK, ev.REQUEST, engine, 14 * MS, 0, r),
            Event(INSTANT, ev.FIRST_AUDIO, ev.REQUEST, engine, 22 * MS, 0, r),
            Event(INSTANT, ev.AUDIO_CHUNK, ev.REQUEST, engine, 22 * MS, 0, r, {"samples": 7680}),
            Event(INSTANT, ev.LAST_AUDIO, ev.REQUEST, engine, 22 * MS, 0, r),
            Event(INSTANT, ev.FINISHED, ev.REQUEST, engine, 23 * MS, 0, r),
        ]
    e += [
        Event(COUNTER, ev.IN_FLIGHT, ev.ENGINE, engine, t * MS, 0, None, {"value": v})
        for t, v in ((0, 1), (2, 2), (23, 0))
    ]
    e += [
        Event(COUNTER, "cpu_percent", ev.UTILIZATION, pid, t * MS, 0, None, {"value": 50.0 + t})
        for pid in (engine, worker)
        for t in (5, 10, 15, 20)
    ]
    return merge_timelines(
        [
            EventBatch(engine, "engine", [x for x in e if x.pid == engine]),
            EventBatch(worker, "talker-worker", [x for x in e if x.pid == worker]),
        ]
    )


@pytest.fixture
def run() -> Timeline:
    return sample_run()


@pytest.fixture(scope="module")
def server(checkpoints):
    """Our HTTP server over a tiny engine, on a free loopback port, in a thread."""
    with Engine(EngineConfig(model=str(checkpoints["base"]))) as engine:
        app = create_server(engine, ApiLimits(max_in_flight=4))
        srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not srv.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        port = srv.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
        srv.should_exit = True
        thread.join(timeout=10)
