"""The recorder: what it records, its bound, its one wire format, and merging processes onto one clock."""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
from multiprocessing.connection import Connection

import numpy as np
import pytest

from telemetry import events as ev
from telemetry.events import EventBatch, Recorder, Timeline, merge_timelines, now_ns


def test_span_instant_counter_are_recorded_with_their_fields():
    rec = Recorder("talker")
    with rec.span(ev.DECODE_STEP, ev.TALKER, batch_size=2, requests=["a", "b"]):
        time.sleep(0.001)
    rec.instant(ev.FIRST_AUDIO, request="a")
    rec.counter(ev.IN_FLIGHT, 2)
    t = now_ns()
    rec.record_span(ev.COPY, ev.TRANSPORT, t, t + 500, request="a", bytes=64)
    span, instant, counter, copy = rec.drain()
    assert span.kind == "span" and span.track == "talker" and span.dur_ns >= 1_000_000
    assert span.args == {"batch_size": 2, "requests": ["a", "b"]} and span.requests() == ("a", "b")
    assert instant.kind == "instant" and instant.request == "a" and instant.dur_ns == 0
    assert counter.args == {"value": 2}
    assert copy.start_ns == t and copy.dur_ns == 500 and copy.requests() == ("a",)
    assert {e.pid for e in (span, instant, counter, copy)} == {rec.pid}
    assert rec.drain() == []


def test_disabled_recorder_records_nothing():
    rec = Recorder(enabled=False)
    with rec.span(ev.PREFILL, ev.TALKER):
        pass
    rec.instant(ev.ADMITTED, request="a")
    rec.counter(ev.QUEUE_DEPTH, 1)
    rec.record_span(ev.WAIT, ev.TRANSPORT, now_ns())
    assert rec.drain() == []


def test_full_buffer_drops_the_oldest_and_counts_them():
    rec = Recorder(capacity=3)
    for i in range(5):
        rec.counter(ev.QUEUE_DEPTH, i)
    batch = rec.drain_batch()
    assert [e.args["value"] for e in batch.events] == [2, 3, 4]
    assert batch.dropped == 2 and rec.dropped == 0


def test_batch_survives_the_wire_with_numpy_args():
    rec = Recorder("code2wav")
    with rec.span(ev.CODE2WAV_DECODE, ev.CODE2WAV, frames=np.int64(8), shape=(2, 3)):
        pass
    batch = rec.drain_batch()
    back = EventBatch.from_bytes(batch.to_bytes())
    assert back.pid == batch.pid and back.process == "code2wav" and back.clock == ev.clock_name()
    assert back.events[0].args == {"frames": 8, "shape": [2, 3]}
    assert back.events[0][:6] == batch.events[0][:6]


def test_timeline_round_trip_keeps_processes_and_drops(run: Timeline):
    run.dropped[100] = 7
    back = Timeline.from_bytes(run.to_bytes())
    assert back.events == run.events
    assert back.processes == run.processes and back.dropped[100] == 7


def test_spans_become_record_function_ranges_only_while_a_capture_is_on():
    rec = Recorder()
    opened: list[str] = []

    class FakeRange:
        def __init__(self, name: str):
            opened.append(name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    with rec.span(ev.DECODE_STEP, ev.TALKER):
        pass
    rec.range_factory = FakeRange
    with rec.span(ev.DECODE_STEP, ev.TALKER):
        pass
    assert opened == ["talker/decode_step"] and len(rec.drain()) == 2


@pytest.mark.skipif(sys.platform != "linux", reason="the clock's name is Linux's")
def test_the_clock_is_the_system_wide_monotonic_clock():
    assert ev.clock_name() == "clock_gettime(CLOCK_MONOTONIC)"
    a = now_ns()
    b = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    c = now_ns()
    assert a <= b <= c


def _child(name: str, conn: Connection) -> None:
    """Record, wait for the parent's go, record again, ship the events home."""
    ev.set_process_name(name)
    rec = ev.get_recorder()
    rec.instant("before", track=ev.ENGINE)
    with rec.span(ev.PREFILL, ev.TALKER):
        pass
    conn.send("ready")
    conn.recv()
    rec.instant("after", track=ev.ENGINE)
    conn.send_bytes(rec.drain_batch().to_bytes())


def test_merging_two_processes_keeps_their_order_on_one_clock():
    ctx = mp.get_context("spawn")
    rec = Recorder("parent")
    children = []
    for name in ("talker-worker", "code2wav-worker"):
        here, there = ctx.Pipe()
        p = ctx.Process(target=_child, args=(name, there))
        p.start()
        children.append((p, here))
    try:
        for _, conn in children:
            assert conn.poll(60) and conn.recv() == "ready"
        rec.instant("parent")
        for _, conn in children:
            conn.send("go")
        batches = [EventBatch.from_bytes(conn.recv_bytes()) for _, conn in children]
    finally:
        for p, _ in children:
            p.join(10)
            if p.is_alive():
                p.kill()
    tl = merge_timelines([*batches, rec.drain_batch()])
    assert set(tl.processes.values()) == {"talker-worker", "code2wav-worker", "parent"}
    assert [e.start_ns for e in tl.events] == sorted(e.start_ns for e in tl.events)
    (parent,) = tl.select(name="parent")
    for b in batches:
        mine = [e for e in tl.events if e.pid == b.pid]
        assert [e.name for e in mine] == ["before", ev.PREFILL, "after"]
        assert mine[1].start_ns < parent.start_ns < mine[2].start_ns  # the parent's instant falls between


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
