"""The `ray` executor on a real local Ray cluster (2 CPUs, started once for the module): the same stage loop in a Ray
actor, mixed with `mp` and `uni`, its actor's death and replacement, and a close that leaves nothing behind.

One cluster for the module because starting one takes seconds; each actor asks for half a CPU so that two stages
(and a replacement) fit."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest

ray = pytest.importorskip("ray")

from engine import Engine, EngineConfig, EngineError  # noqa: E402
from engine.config import DecodeConfig, RayPlacement, StageConfig  # noqa: E402
from engine.model.sampling import SamplingParams  # noqa: E402
from engine.runtime.ray_executor import ACTOR_PREFIX, RayExecutor  # noqa: E402
from tests.engine.test_engine import assert_clean, clone, wait_until  # noqa: E402

HALF_A_CPU = RayPlacement(num_cpus=0.5)


def config(checkpoint: Path, talker: str, code2wav: str, **engine) -> EngineConfig:
    """Both stages under the given executors; `ray` stages take half a CPU each. Sampling is `official` (per-row
    generators), so that a seeded request draws the same whichever process runs it."""
    return EngineConfig(
        model=str(checkpoint),
        talker=StageConfig(executor=talker, max_num_seqs=8, ray=HALF_A_CPU, restart_backoff_s=0.1),
        code2wav=StageConfig(executor=code2wav, max_num_seqs=4, ray=HALF_A_CPU, restart_backoff_s=0.1),
        decode=DecodeConfig(sampling_mode="official"),
        **engine,
    )


def our_actors() -> list[str]:
    """The live named actors this process's engines made."""
    prefix = f"{ACTOR_PREFIX}{os.getpid()}-"
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """A local Ray cluster of 2 CPUs for this module; the engines connect to it (and leave it running)."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20, namespace="voxtrace-tests")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_ray(checkpoints) -> Engine:
    with Engine(config(checkpoints["base"], "ray", "ray")) as engine:
        yield engine


def requests(clips) -> list:
    greedy = clone(clips, frames=12)
    seeded = clone(clips, frames=12, sampling=SamplingParams(do_sample=True, subtalker_dosample=True), seed=7)
    return [greedy, seeded]


def audio(engine: Engine, clips) -> list[np.ndarray]:
    return [engine.synthesize(dataclasses.replace(r, request_id=f"{r.request_id}x")).wav for r in requests(clips)]


def test_ray_gives_the_same_audio_as_uni_and_as_mp_greedy_and_seeded(ray_ray: Engine, checkpoints, clips) -> None:
    """Against `uni`-`uni` and a mixed config (talker `mp`, code2wav `ray`): the ray actors, the mp worker and the
    engine's threads all make the same bytes (test_engine.py holds `mp`-`mp` to `uni`-`uni` likewise)."""
    assert all(isinstance(s, RayExecutor) for s in ray_ray.router.stages.values())
    assert set(ray_ray.probe.worker_pids()) == {"talker", "code2wav"}  # each actor its own process
    got = audio(ray_ray, clips)
    with Engine(config(checkpoints["base"], "uni", "uni")) as uni:
        assert all(np.array_equal(ours, theirs) for ours, theirs in zip(got, audio(uni, clips), strict=True))
    with Engine(config(checkpoints["base"], "mp", "ray")) as mixed:
        assert [type(s).__name__ for s in mixed.router.stages.values()] == ["RayExecutor", "MpExecutor"]
        assert all(np.array_equal(ours, theirs) for ours, theirs in zip(got, audio(mixed, clips), strict=True))


def test_the_actors_events_reach_the_timeline_with_their_handoffs(ray_ray: Engine, clips) -> None:
    ray_ray.probe.timeline()  # drained: only this request's events follow
    request = clone(clips, frames=6)
    ray_ray.synthesize(request)
    timeline = ray_ray.probe.timeline()
    assert {"talker", "code2wav"} <= set(timeline.processes.values())
    handoffs = [e for e in timeline.events if e.name == "handoff" and e.request == request.request_id]
    # into the talker (the job, credits), back (code chunks), into code2wav (the star path), back (audio)
    assert {e.pid for e in handoffs} >= set(ray_ray.probe.worker_pids().values()) | {os.getpid()}
    assert all(e.dur_ns > 0 for e in handoffs)
    for stage in ray_ray.router.stages.values():
        assert stage.clock is not None and not stage.clock.applied  # one node: one clock, nothing to correct


def test_a_killed_stage_actor_fails_its_requests_clearly_and_the_next_request_succeeds(ray_ray: Engine, clips) -> None:
    talker = ray_ray.router.stages["talker"]
    pid = talker.pid

    async def killed_mid_stream() -> None:
        stream = ray_ray.generate(clone(clips, frames=2000))
        await anext(stream)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EngineError, match="the talker worker died while serving this request") as died:
            async for _ in stream:
                pass
        assert_clean(str(died.value))

    asyncio.run(asyncio.wait_for(killed_mid_stream(), 60))
    wait_until(lambda: ray_ray.ready()["talker"], what="a new talker actor")
    assert talker.pid != pid
    assert sum(c.frames for c in ray_ray.synthesize(clone(clips, frames=5)).chunks) == 5
    assert ray_ray.requests_in_flight == 0


def test_close_leaves_no_actor_process_or_thread_behind(ray_ray: Engine, clips) -> None:
    """The module's last test: it closes the shared engine (its fixture's close then does nothing)."""
    threads = {t for t in threading.enumerate() if t.name.startswith(("talker", "code2wav"))}
    pids = list(ray_ray.probe.worker_pids().values())
    assert len(our_actors()) == 2 and all(psutil.pid_exists(p) for p in pids)
    ray_ray.close()
    assert not any(psutil.pid_exists(p) for p in pids)  # close waits for the actors' processes to be gone
    assert our_actors() == []
    assert not any(t.is_alive() for t in threads)
    assert ray.is_initialized()  # the cluster was the test's: left running
    with pytest.raises(EngineError, match="closed"):
        ray_ray.synthesize(clone(clips, frames=3))
