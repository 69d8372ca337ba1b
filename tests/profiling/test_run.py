"""A profiled run of the real engine on the tiny model: the timeline, the trace, the metrics and the run folder."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from engine import Engine, EngineConfig
from engine.config import StageConfig
from profiling.bench.prompt_set import PromptSet
from profiling.run import RunResult, profile_run
from profiling.trace import check_trace
from telemetry import events as ev
from telemetry.events import SPAN, Timeline

FRAMES = 26  # 2 + 8 + 8 + 8: a stream of four chunks


def config(checkpoint: Path, talker: str, code2wav: str) -> EngineConfig:
    stage = {"max_num_seqs": 4}
    return EngineConfig(
        model=str(checkpoint),
        talker=StageConfig(executor=talker, **stage),
        code2wav=StageConfig(executor=code2wav, **stage),
    )


@pytest.fixture(scope="module", params=["uni-uni", "mp-mp"])
def engine(request, checkpoints) -> Engine:
    talker, code2wav = request.param.split("-")
    with Engine(config(checkpoints["base"], talker, code2wav)) as e:
        yield e


def requests(n: int, frames: int = FRAMES, prefix: str = "r") -> list:
    jobs = PromptSet.load().select(length="short").jobs(n)
    return [
        job.request("voice_clone", max_new_tokens=frames + 1, greedy=True, request_id=f"{prefix}{i}")
        for i, job in enumerate(jobs)
    ]


def last_talker_frame_ns(tl: Timeline, request: str) -> int:
    steps = tl.select(kind=SPAN, name=ev.DECODE_STEP, track=ev.TALKER, request=request)
    return max(e.end_ns for e in steps)


def test_a_run_has_both_stages_and_streams_before_the_talker_is_done(engine: Engine, tmp_path: Path) -> None:
    seen: list[int] = []
    result = profile_run(engine, requests(3), run_dir=tmp_path, progress=lambda done, total: seen.append(done))
    tl = result.timeline
    assert seen == [1, 2, 3] and not result.errors
    decode_steps = tl.select(kind=SPAN, name=ev.DECODE_STEP, track=ev.TALKER)
    decodes = tl.select(kind=SPAN, name=ev.CODE2WAV_DECODE, track=ev.CODE2WAV)
    assert decode_steps and decodes
    workers = engine.probe.worker_pids()
    assert {e.pid for e in decode_steps} == {workers.get("talker", os.getpid())}
    assert {e.pid for e in decodes} == {workers.get("code2wav", os.getpid())}
    for rid in result.requests:
        # streaming: the listener has audio while the talker is still generating this request's frames
        assert tl.milestones(rid)[ev.FIRST_AUDIO] < last_talker_frame_ns(tl, rid)
        assert len(result.audio[rid]) == FRAMES * 1920
    assert [m.request for m in result.per_request] == ["r0", "r1", "r2"]
    assert result.metrics.audio_s == pytest.approx(3 * FRAMES * 0.08)
    assert all(m.ttfa_s < m.e2e_s for m in result.per_request)
    assert {m.request for m in result.server_per_request} == {"r0", "r1", "r2"}
    assert set(result.breakdowns["r0"].stage_s) == {"prompt", "talker", "code2wav"}
    assert result.ipc.transfers > 0 and (result.ipc.bytes > 0) == bool(workers)
    # CPU % sampled for the engine's process and each worker
    assert len(result.utilization) == 1 + len(workers)
    assert set(result.figures()) == {"timeline", "utilization", "overhead"}
    check_run_folder(tmp_path, result)


def check_run_folder(run_dir: Path, result: RunResult) -> None:
    trace = json.loads((run_dir / "trace.json").read_text())
    assert check_trace(trace) == []
    assert {e["name"] for e in trace["traceEvents"]} >= {ev.DECODE_STEP, ev.CODE2WAV_DECODE, ev.FIRST_AUDIO}
    stored = Timeline.from_bytes((run_dir / "timeline.json").read_bytes())
    assert len(stored.events) == len(result.timeline.events)
    metrics = json.loads((run_dir / "metrics.json").read_text(), parse_constant=pytest.fail)  # strict: no NaN
    assert metrics["metrics"]["requests"] == 3
    assert sorted(p.name for p in (run_dir / "audio").iterdir()) == ["r0.wav", "r1.wav", "r2.wav"]


def test_a_captured_run_writes_a_torch_trace_per_process_on_our_clock(engine: Engine, tmp_path: Path) -> None:
    result = profile_run(engine, requests(2, frames=4, prefix="c"), capture=True, run_dir=tmp_path)
    workers = engine.probe.worker_pids()
    files = sorted(p.name.split(".")[0] for p in (tmp_path / "tb").glob("*.pt.trace.json"))
    assert files == sorted(["engine", *workers])  # TensorBoard's layout: <logdir>/tb/<worker>.<ns>.pt.trace.json
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert check_trace(trace) == []
    # our spans are record_function ranges in the process that ran the stage, shifted onto the events' clock
    ranges = {(e["pid"], e["name"]) for e in trace["traceEvents"] if e.get("cat") == "user_annotation"}
    assert (workers.get("talker", os.getpid()), "talker/decode_step") in ranges
    assert (workers.get("code2wav", os.getpid()), "code2wav/decode") in ranges
    steps = result.timeline.select(kind=SPAN, name=ev.DECODE_STEP)
    torch_steps = [e for e in trace["traceEvents"] if e.get("name") == "talker/decode_step"]
    assert abs(min(e["ts"] for e in torch_steps) - steps[0].start_ns / 1000) < 1000  # µs: within a millisecond
    assert engine.probe.stop_capture() == []  # nothing left running
    assert result.gpu_idle is None  # a CPU run: no GPU ops to split
    assert json.loads((tmp_path / "metrics.json").read_text())["gpu_idle"] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_captured_cuda_run_splits_gpu_idle_per_stage(checkpoints, tmp_path: Path) -> None:
    cfg = dataclasses.replace(config(checkpoints["base"], "mp", "uni"), device="cuda")
    with Engine(cfg) as engine:
        result = profile_run(engine, requests(2, frames=8, prefix="g"), capture=True, run_dir=tmp_path)
    split = result.gpu_idle
    assert split is not None and {"talker", "code2wav"} <= set(split.stages), split and split.table()
    talker = split.stages["talker"]
    assert talker.steps > 0 and talker.launches > talker.steps  # eager: many launches per decode step
    assert split.gpu_busy_us + split.gpu_idle_us == pytest.approx(split.window_us)
    saved = json.loads((tmp_path / "metrics.json").read_text())["gpu_idle"]
    assert saved["stages"]["talker"]["launches"] == talker.launches


def test_recording_off_still_measures_the_run(engine: Engine) -> None:
    engine.probe.set_recording(False)
    try:
        result = profile_run(engine, requests(2, frames=4, prefix="off"))
    finally:
        engine.probe.set_recording(True)
    assert not [e for e in result.timeline.events if e.track != ev.UTILIZATION]
    assert result.metrics.requests == 2 and result.metrics.audio_s == pytest.approx(2 * 4 * 0.08)
    assert profile_run(engine, requests(1, frames=2, prefix="on")).timeline.select(name=ev.DECODE_STEP)


def test_a_failed_request_is_reported_and_the_others_complete(engine: Engine) -> None:
    good, bad = requests(2, frames=4, prefix="f")
    bad.ref_audio = b"not audio"
    result = profile_run(engine, [good, bad])
    assert list(result.errors) == ["f1"] and result.errors["f1"].startswith("ref_audio: ")  # no class name
    assert [m.request for m in result.per_request] == ["f0"]
