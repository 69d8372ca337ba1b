"""The direct path: in `mp`-`mp`, the talker's worker sends its code chunks straight to code2wav's over a link of
their own; the engine's process sees only audio and control. A cancel, a death and a replacement keep to the rules
of the star path: nothing is held for a request that ended, a death fails only what it may hold, and the survivor
is linked to the new worker."""

from __future__ import annotations

import asyncio
import os
import sys

import numpy as np
import pytest

from engine import Engine
from telemetry import events as ev
from telemetry.events import Timeline
from tests.engine.test_engine import clone, collect, engine_config, kill_mid_stream, our_rings, wait_until


@pytest.fixture(scope="module")
def engine(checkpoints) -> Engine:
    with Engine(engine_config(checkpoints["base"], "mp", "mp", restart_backoff_s=0.1)) as engine:
        yield engine


def hops(timeline: Timeline, message: str) -> dict[str, int]:
    """Process name -> how many `message`s were handed to it (the HANDOFF span is recorded where one lands)."""
    counts: dict[str, int] = {}
    for e in timeline.select(name=ev.HANDOFF):
        if (e.args or {}).get("message") == message:
            name = "engine" if e.pid == os.getpid() else timeline.processes[e.pid]
            counts[name] = counts.get(name, 0) + 1
    return counts


def test_code_chunks_go_from_talker_to_code2wav_without_the_engine_process(engine: Engine, clips) -> None:
    engine.probe.timeline()  # drop what came before
    chunks = engine.synthesize(clone(clips, frames=20)).chunks
    assert len(chunks) > 2
    timeline = engine.probe.timeline()
    assert hops(timeline, "CodeChunk") == {"code2wav": len(chunks)}  # one hop each; none through the engine
    assert hops(timeline, "AudioOut") == {"engine": len(chunks)}
    talker = engine.probe.worker_pids()["talker"]
    assert len([e for e in timeline.select(name=ev.SERIALIZE) if e.pid == talker]) == len(chunks)  # its side


def test_a_cancel_in_flight_leaves_code2wav_holding_nothing(engine: Engine, clips) -> None:
    async def cancel_after_first_chunk() -> None:
        stream = engine.generate(clone(clips, frames=400))  # chunks keep coming while the cancel travels
        assert (await anext(stream)).index == 0
        await stream.aclose()

    asyncio.run(asyncio.wait_for(cancel_after_first_chunk(), 60))
    engine.probe.timeline()
    assert sum(c.frames for c in engine.synthesize(clone(clips, frames=6)).chunks) == 6
    held = [e.args["value"] for e in engine.probe.timeline().select(kind=ev.COUNTER, name=ev.IN_FLIGHT)
            if e.track == ev.CODE2WAV]  # fmt: skip
    assert held and held[-1] == 0  # after the next request's last step: no state kept for the cancelled one


@pytest.mark.parametrize("kind", ["code2wav", "talker"])
def test_a_worker_killed_mid_stream_is_replaced_and_linked_to_the_other(kind: str, engine: Engine, clips) -> None:
    other = "talker" if kind == "code2wav" else "code2wav"
    pids = engine.probe.worker_pids()
    alone = engine.synthesize(clone(clips, frames=8)).wav

    assert f"{kind} worker died" in str(kill_mid_stream(engine, clips, pids[kind]))
    wait_until(lambda: engine.ready()[kind], what=f"a new {kind} worker")
    new = engine.probe.worker_pids()
    assert new[kind] != pids[kind] and new[other] == pids[other]  # the survivor kept its worker
    engine.probe.timeline()
    again = engine.synthesize(clone(clips, frames=8))
    np.testing.assert_array_equal(again.wav, alone)
    assert hops(engine.probe.timeline(), "CodeChunk") == {"code2wav": len(again.chunks)}  # over the new link
    assert engine.requests_in_flight == 0 and engine.router.requests_in(kind) == []


def test_the_link_leaves_no_segment_behind(engine: Engine, clips) -> None:
    """The engine unlinks a link's segment as soon as both workers have mapped it: in /dev/shm there are only the
    four rings between the engine and its two workers, whatever happens to the workers later."""
    assert len(our_rings()) == 4
    assert asyncio.run(collect(engine, clone(clips, frames=3)))


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, *sys.argv[1:]]))
