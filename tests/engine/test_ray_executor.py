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
from engine.config import DecodeConfig, RayClusterConfig, RayPlacement, StageConfig  # noqa: E402
from engine.model.sampling import SamplingParams  # noqa: E402
from engine.runtime import ExecutorError  # noqa: E402
from engine.runtime.ray_executor import ACTOR_PREFIX, RayExecutor  # noqa: E402
from engine.runtime.ray_placement import GROUP_PREFIX  # noqa: E402
from tests.engine.test_engine import assert_clean, clone, collect, kill_mid_stream, wait_until  # noqa: E402

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


def test_ray_gives_the_same_audio_as_uni_and_as_mp_greedy_and_seeded(
    ray_ray: Engine, mixed: Engine, checkpoints, clips
) -> None:
    """`ray`-`ray` against `uni`-`uni` and against `mp`-`ray` (the `mixed` engine): the actors, the mp worker and the
    engine's threads all make the same bytes (test_engine.py holds `mp`-`mp` to `uni`-`uni` likewise)."""
    assert all(isinstance(s, RayExecutor) for s in ray_ray.stages.values())
    assert set(ray_ray.probe.worker_pids()) == {"talker", "code2wav"}  # each actor its own process
    got = audio(ray_ray, clips)
    with Engine(config(checkpoints["base"], "uni", "uni")) as uni:
        assert all(np.array_equal(ours, theirs) for ours, theirs in zip(got, audio(uni, clips), strict=True))
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
    for stage in ray_ray.stages.values():
        assert stage.clock is not None and not stage.clock.applied  # one node: one clock, nothing to correct
    offsets = [e for e in timeline.events if e.name == "clock_offset"]  # re-measured at this drain, bound recorded
    assert {e.args["stage"] for e in offsets} == {"talker", "code2wav"}
    assert all(e.args["error_ns"] >= 0 and not e.args["applied"] for e in offsets)


def test_a_killed_stage_actor_fails_its_requests_clearly_and_the_next_request_succeeds(ray_ray: Engine, clips) -> None:
    talker = ray_ray.router.stages["talker"]
    pid = talker.pid

    died = str(kill_mid_stream(ray_ray, clips, pid))
    assert "the talker worker died while serving this request" in died
    assert_clean(died)
    wait_until(lambda: ray_ray.ready()["talker"], what="a new talker actor")
    assert talker.pid != pid
    assert sum(c.frames for c in ray_ray.synthesize(clone(clips, frames=5)).chunks) == 5
    assert ray_ray.requests_in_flight == 0


@pytest.fixture(scope="module")
def mixed(checkpoints) -> Engine:
    """A mixed config, mixed: two copies of the pipeline, each with its talker in an `mp` worker and its code2wav
    in a Ray actor of a quarter CPU (beside the module's `ray`-`ray` engine), placed on its own (no placement group:
    the `ray`-`ray` engine has the default's)."""
    code2wav = StageConfig(executor="ray", max_num_seqs=4, ray=RayPlacement(num_cpus=0.25), restart_backoff_s=0.1)
    alone = RayClusterConfig(placement_strategy=None)
    mixed = dataclasses.replace(config(checkpoints["base"], "mp", "uni"), code2wav=code2wav, replicas=2, ray=alone)
    with Engine(mixed) as engine:
        yield engine


def served_by(engine: Engine, timeline) -> dict[str, set[str]]:
    """Stage process (of any replica) -> the requests whose messages it picked up."""
    stage_of = {pid: name for name, pid in engine.probe.worker_pids().items()}
    served: dict[str, set[str]] = {}
    for e in timeline.events:
        if e.name == "handoff" and e.pid in stage_of and e.request is not None:
            served.setdefault(stage_of[e.pid], set()).add(e.request)
    return served


def test_two_replicas_serve_16_concurrent_requests_using_both_and_losing_none(mixed: Engine, clips) -> None:
    assert set(mixed.stages) == {"talker@r0", "code2wav@r0", "talker@r1", "code2wav@r1"}
    assert [type(s).__name__ for s in mixed.stages.values()] == ["RayExecutor", "MpExecutor"] * 2
    mixed.probe.timeline()
    requests = [clone(clips, frames=4 + i % 3) for i in range(16)]

    async def all_at_once() -> list[list]:
        return await asyncio.gather(*(collect(mixed, r) for r in requests))

    streams = asyncio.run(asyncio.wait_for(all_at_once(), 120))
    for request, chunks in zip(requests, streams, strict=True):
        assert [c.index for c in chunks] == list(range(len(chunks))) and chunks[-1].is_last
        assert sum(c.frames for c in chunks) == request.max_new_tokens - 1
    served = served_by(mixed, mixed.probe.timeline())
    talkers = {name: served.get(name, set()) for name in ("talker@r0", "talker@r1")}
    assert all(talkers.values())  # both replicas used
    assert set.union(*talkers.values()) == {r.request_id for r in requests}
    assert sum(map(len, talkers.values())) == 16  # each request on one replica only
    assert served["code2wav@r0"] == talkers["talker@r0"] and served["code2wav@r1"] == talkers["talker@r1"]
    assert mixed.requests_in_flight == 0


def test_a_replica_s_dead_actor_fails_only_that_replica_s_requests(mixed: Engine, clips) -> None:
    async def outcome(stream) -> int | str:
        """The frames the stream delivered in all, or the error that ended it."""
        frames = 0
        try:
            async for chunk in stream:
                frames += chunk.frames
        except EngineError as exc:
            return str(exc)
        return frames

    async def one_dies() -> None:
        requests = [clone(clips, frames=40) for _ in range(4)]
        streams = [mixed.generate(r) for r in requests]
        firsts = [await anext(s) for s in streams]  # admitted in turn: two on each replica
        replica = [mixed.router.replica_of(r.request_id) for r in requests]
        assert sorted(replica) == [0, 0, 1, 1]
        os.kill(mixed.stages["code2wav@r1"].pid, signal.SIGKILL)  # replica 1's code2wav actor
        ends = await asyncio.gather(*(outcome(s) for s in streams))
        for first, end, where in zip(firsts, ends, replica, strict=True):
            if where == 1:
                assert "the code2wav worker died while serving this request" in end
            else:
                assert first.frames + end == 40  # the other replica's requests are whole

    asyncio.run(asyncio.wait_for(one_dies(), 90))
    wait_until(lambda: mixed.router.restarters["code2wav@r1"].up, what="replica 1's new code2wav actor")
    assert mixed.requests_in_flight == 0


def our_groups(engine_pid: int = os.getpid()) -> dict[str, dict]:
    """This process's placement groups that still hold resources (reserved, or waiting for room), by name."""
    prefix = f"{GROUP_PREFIX}{engine_pid}@"
    table = ray.util.placement_group_table().values()
    return {g["name"]: g for g in table if g["name"].startswith(prefix) and g["state"] != "REMOVED"}


def test_a_placement_group_places_a_pipeline_whole_or_refuses_it_whole(checkpoints, clips) -> None:
    """`ray.placement_strategy`: the `ray` stages' resources are reserved together before any actor starts (PACK
    unless said: the module's `ray`-`ray` engine holds a group too). Here the talker's bundle takes every CPU the
    cluster has left, so its actor can run only inside it. A pipeline that cannot fit is refused at start, naming the
    stages, and nothing stays reserved; close gives the group back."""
    free, before = ray.available_resources()["CPU"], our_groups()
    talker = dataclasses.replace(config(checkpoints["base"], "ray", "uni").talker, ray=RayPlacement(num_cpus=free))
    packed = dataclasses.replace(
        config(checkpoints["base"], "ray", "uni"), talker=talker, ray=RayClusterConfig(placement_strategy="STRICT_PACK")
    )
    with Engine(packed) as engine:
        (group,) = [g for name, g in our_groups().items() if name not in before]
        assert group["state"] == "CREATED" and group["strategy"] == "STRICT_PACK"
        assert list(group["bundles"].values()) == [{"CPU": free}]
        assert "CPU" not in ray.available_resources()  # all of it reserved: the actor is inside the group
        assert sum(c.frames for c in engine.synthesize(clone(clips, frames=4)).chunks) == 4
    assert our_groups() == before

    too_big = dataclasses.replace(
        packed,
        talker=dataclasses.replace(talker, ray=RayPlacement(num_cpus=64)),
        ray=RayClusterConfig(placement_strategy="PACK", placement_timeout_s=1),
    )
    with pytest.raises(ExecutorError, match=r"no room for the talker stage \(PACK: talker: \{'CPU': 64\}\) within 1 s"):
        Engine(too_big)
    assert our_groups() == before and ray.available_resources()["CPU"] == free


def test_close_leaves_no_actor_process_or_thread_behind(ray_ray: Engine, clips) -> None:
    """The module's last test: it closes the shared engine (its fixture's close then does nothing)."""
    threads = {t for t in threading.enumerate() if t.name.split("-")[0] in ("talker", "code2wav")}  # not `mixed`'s
    pids = list(ray_ray.probe.worker_pids().values())
    actors = {stage.actor_name for stage in ray_ray.stages.values()}
    assert actors <= set(our_actors()) and all(psutil.pid_exists(p) for p in pids)
    ray_ray.close()
    assert not any(psutil.pid_exists(p) for p in pids)  # close waits for the actors' processes to be gone
    assert actors & set(our_actors()) == set()
    assert not any(t.is_alive() for t in threads)
    assert ray.is_initialized()  # the cluster was the test's: left running
    with pytest.raises(EngineError, match="closed"):
        ray_ray.synthesize(clone(clips, frames=3))
