"""One profiled run of the embedded engine: requests sent concurrently, every process's events, utilization, metrics,
optionally torch.profiler traces, all written to a run folder.

    result = profile_run(engine, requests, capture=True, run_dir=Path("runs/2024-..."))
    result.metrics.ttfa_s.p50, result.figures()["timeline"], result.audio["r0"]

The run folder:
    timeline.json   every process's events (`Timeline.to_bytes`; `Timeline.from_bytes` reads it back)
    trace.json      Chrome-trace JSON for Perfetto / chrome://tracing (our spans, plus torch ops when captured)
    metrics.json    run metrics, per-request metrics (client and engine side), breakdowns, IPC overhead, utilization
    audio/<request>.wav   16-bit PCM (`wav_subtype="FLOAT"`: the engine's float32 samples as they are)
    tb/<process>.<ns>.pt.trace.json   when captured: TensorBoard's profiler plugin (`--logdir <run folder>`)

A capture of a CUDA run also yields the GPU idle split (`profiling.gpu_idle`): metrics.json's "gpu_idle", and a second
panel in the overhead figure.

Client-side metrics time each request from the call to `generate` to each chunk's arrival in this process; the
engine-side ones (`server_per_request`) come from its ADMITTED and AUDIO_CHUNK events. Both use the events' clock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import AudioChunk, Engine, EngineError, RequestError, SpeechRequest
from profiling.gpu_idle import IdleSplit, idle_split
from profiling.metrics import (
    IpcOverhead,
    RequestBreakdown,
    RequestMetrics,
    RunMetrics,
    ipc_overhead,
    request_breakdowns,
    request_metrics,
    run_metrics,
    timeline_request_metrics,
)
from profiling.trace import check_trace, chrome_trace, write_chrome_trace
from profiling.utilization import CPU_PERCENT, GPU_BUSY_PERCENT, UtilizationSampler
from telemetry.capture import TorchTrace
from telemetry.events import UTILIZATION, Event, EventBatch, Timeline, clock_name, merge_timelines, now_ns

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (requests done, total)
WAV_SUBTYPES = ("PCM_16", "FLOAT")  # soundfile's names: what players and editors take, or the samples unrounded
OnChunk = Callable[[AudioChunk], None]


@dataclass
class RunResult:
    """Everything one run produced. `audio` holds each request's waveform (float32, `sample_rate`) for playback;
    `errors` the requests that failed, by id, with the message."""

    requests: list[str]
    sample_rate: int
    wall_s: float
    metrics: RunMetrics
    per_request: list[RequestMetrics]
    server_per_request: list[RequestMetrics]
    breakdowns: dict[str, RequestBreakdown]
    ipc: IpcOverhead
    timeline: Timeline
    audio: dict[str, np.ndarray] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    torch_traces: list[TorchTrace] = field(default_factory=list)
    utilization: dict[str, float] = field(default_factory=dict)  # mean CPU % per process name
    gpu_busy_percent: dict[str, float] = field(default_factory=dict)  # mean NVML busy % per GPU ("gpu0")
    gpu_idle: IdleSplit | None = None  # from a capture with GPU ops
    run_dir: Path | None = None

    @property
    def cpu_percent(self) -> float:
        """The engine's processes together (100 = one core busy), mean over the run; NaN when unsampled."""
        return sum(self.utilization.values()) if self.utilization else float("nan")

    @property
    def gpu_busy_mean_percent(self) -> float:
        """NVML busy %, mean over the run and the GPUs; NaN without a GPU."""
        values = list(self.gpu_busy_percent.values())
        return sum(values) / len(values) if values else float("nan")

    def trace(self) -> dict[str, Any]:
        """The Perfetto trace (built on demand: with torch traces it can be large)."""
        return chrome_trace(self.timeline, self.torch_traces)

    def figures(self) -> dict[str, Any]:
        """Plotly figures: "timeline", "utilization", "overhead" (per-request time breakdown)."""
        from profiling.figures import overhead_figure, timeline_figure, utilization_figure

        return {
            "timeline": timeline_figure(self.timeline),
            "utilization": utilization_figure(self.timeline),
            "overhead": overhead_figure(
                self.breakdowns, gpu_idle=self.gpu_idle, end_to_end_s={m.request: m.e2e_s for m in self.per_request}
            ),
        }

    def summary(self) -> dict[str, Any]:
        """What metrics.json holds: JSON-safe, no audio, no events."""
        return {
            "requests": self.requests,
            "sample_rate": self.sample_rate,
            "wall_s": self.wall_s,
            "clock": clock_name(),
            "metrics": self.metrics.to_dict(),
            "per_request": [m.to_dict() for m in self.per_request],
            "server_per_request": [m.to_dict() for m in self.server_per_request],
            "breakdowns": {r: b.to_dict() for r, b in self.breakdowns.items()},
            "ipc": self.ipc.to_dict(),
            "utilization_cpu_percent_mean": self.utilization,
            "utilization_gpu_busy_percent_mean": self.gpu_busy_percent,
            "errors": self.errors,
            "processes": {str(pid): name for pid, name in self.timeline.processes.items()},
            "dropped_events": {str(pid): n for pid, n in self.timeline.dropped.items()},
            "torch_traces": [Path(t.path).name for t in self.torch_traces],
            "gpu_idle": self.gpu_idle.to_dict() if self.gpu_idle is not None else None,
        }


async def _one(
    engine: Engine, request: SpeechRequest, slots: asyncio.Semaphore, on_chunk: OnChunk | None
) -> tuple[int, list, str | None]:
    """(start, [(arrival_ns, samples array)], error) for one request, started when a slot frees. The error is the
    engine's own message (it names the field or the failure); anything else is a bug of ours, logged in full."""
    async with slots:
        start, chunks = now_ns(), []
        try:
            async for chunk in engine.generate(request):
                chunks.append((now_ns(), chunk.samples))
                if on_chunk is not None:
                    on_chunk(chunk)
        except (RequestError, EngineError) as exc:  # a failed request is reported, the run goes on
            return start, chunks, str(exc)
        except Exception:
            log.exception("request %s of a profiled run", request.request_id)
            return start, chunks, "internal error (see the server log)"
        return start, chunks, None


async def profile_run_async(
    engine: Engine,
    requests: Sequence[SpeechRequest],
    *,
    concurrency: int | None = None,
    capture: bool = False,
    run_dir: str | Path | None = None,
    progress: Progress | None = None,
    sample_interval_s: float = 0.1,
    on_chunk: OnChunk | None = None,
    wav_subtype: str = "PCM_16",
) -> RunResult:
    """Run `requests` with at most `concurrency` in flight (all at once when None) and profile it; see the module
    doc for what is written to `run_dir` (nothing when None; its WAVs as `wav_subtype`). `capture` needs a `run_dir`
    for its traces. Each chunk is also handed to `on_chunk` as it arrives (a live player), on the event loop: it must
    not block."""
    if capture and run_dir is None:
        raise ValueError("capture=True needs a run_dir for the torch.profiler traces")
    _check_wav_subtype(wav_subtype)  # before the run, not after it
    run_path = Path(run_dir) if run_dir is not None else None
    ids = [r.request_id for r in requests]
    if len(set(ids)) != len(ids):
        raise ValueError("request ids must be unique within a run")
    engine.probe.timeline()  # drop what came before: the run's timeline holds the run only
    pids = [os.getpid(), *engine.probe.worker_pids().values()]
    if capture:
        engine.probe.start_capture(run_path)  # type: ignore[arg-type]
    slots = asyncio.Semaphore(concurrency or max(1, len(requests)))
    sampler = UtilizationSampler(pids, interval_s=sample_interval_s).start()
    t0 = now_ns()
    try:
        tasks = [asyncio.ensure_future(_one(engine, r, slots, on_chunk)) for r in requests]
        for done, task in enumerate(asyncio.as_completed(tasks), start=1):
            await task
            if progress is not None:
                progress(done, len(tasks))
        outcomes = [t.result() for t in tasks]
    finally:
        wall_s = (now_ns() - t0) / 1e9
        sampler.stop()
        traces = engine.probe.stop_capture() if capture else []
    tl = engine.probe.timeline()
    tl = merge_timelines([*_process_batches(tl), tl.events, sampler.events])

    rate = engine.info.sample_rate
    per_request, audio, errors = [], {}, {}
    for rid, (start, chunks, error) in zip(ids, outcomes, strict=True):
        samples = [c for _, c in chunks]
        audio[rid] = np.concatenate(samples) if samples else np.zeros(0, np.float32)
        if error is not None:
            errors[rid] = error
        elif any(len(s) for s in samples):  # no audio: ttfa and rtf are undefined, left out as the reference does
            arrivals = [t / 1e9 for t, _ in chunks]
            per_request.append(request_metrics(rid, start / 1e9, arrivals, [len(s) for s in samples], rate))
    result = RunResult(
        requests=ids,
        sample_rate=rate,
        wall_s=wall_s,
        metrics=run_metrics(per_request, wall_s),
        per_request=per_request,
        server_per_request=timeline_request_metrics(tl, rate),
        breakdowns=request_breakdowns(tl),
        ipc=ipc_overhead(tl),
        timeline=tl,
        audio=audio,
        errors=errors,
        torch_traces=traces,
        utilization=_cpu_means(tl),
        gpu_busy_percent=_gpu_means(tl),
        gpu_idle=idle_split(t.shifted_events() for t in traces) if traces else None,
        run_dir=run_path,
    )
    if run_path is not None:
        write_run(result, run_path, wav_subtype)
    return result


def profile_run(engine: Engine, requests: Sequence[SpeechRequest], **options: Any) -> RunResult:
    """`profile_run_async` from code with no running event loop (a script, a worker thread of the UI)."""
    return asyncio.run(profile_run_async(engine, requests, **options))


def _process_batches(tl: Timeline) -> list[EventBatch]:
    """The timeline's process names and drop counts, so a re-merge with more events keeps them."""
    return [EventBatch(pid, name, [], tl.dropped.get(pid, 0)) for pid, name in tl.processes.items()]


def _means(tl: Timeline, keep: Callable[[Event], bool]) -> dict[tuple[int, str], float]:
    """Mean value of each utilization counter series, by (pid, name), over the events `keep` accepts."""
    values: dict[tuple[int, str], list[float]] = {}
    for e in tl.events:
        if e.track == UTILIZATION and keep(e):
            values.setdefault((e.pid, e.name), []).append(float(e.args["value"]) if e.args else 0.0)
    return {k: float(np.mean(v)) for k, v in values.items() if v}


def _cpu_means(tl: Timeline) -> dict[str, float]:
    means = _means(tl, lambda e: e.name == CPU_PERCENT)
    return {f"{tl.processes.get(pid, pid)} ({pid})": v for (pid, _), v in means.items()}


def _gpu_means(tl: Timeline) -> dict[str, float]:
    means = _means(tl, lambda e: e.name.endswith("." + GPU_BUSY_PERCENT))
    return {name.split(".")[0]: v for (_, name), v in means.items()}


def write_run(result: RunResult, run_dir: str | Path, wav_subtype: str = "PCM_16") -> Path:
    """The run folder (see the module doc). The trace is checked first: a trace Perfetto would misdraw fails here.
    The WAVs are 16-bit PCM unless `wav_subtype` is "FLOAT" (soundfile clips a peak past full scale, never wraps)."""
    import soundfile as sf

    _check_wav_subtype(wav_subtype)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "timeline.json").write_bytes(result.timeline.to_bytes())
    trace = result.trace()
    problems = check_trace(trace)
    if problems:
        raise ValueError(f"the run's trace is unsound ({len(problems)} problems), first: {problems[0]}")
    write_chrome_trace(run_dir / "trace.json", trace)
    (run_dir / "metrics.json").write_text(json.dumps(no_nan(result.summary()), indent=1))
    audio_dir = run_dir / "audio"
    audio_dir.mkdir(exist_ok=True)
    for rid, wav in result.audio.items():
        sf.write(audio_dir / f"{_safe(rid)}.wav", wav, result.sample_rate, subtype=wav_subtype)
    return run_dir


def _check_wav_subtype(subtype: str) -> None:
    if subtype not in WAV_SUBTYPES:
        raise ValueError(f"wav_subtype {subtype!r} is not one of {', '.join(WAV_SUBTYPES)}")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "request"


def no_nan(value: Any) -> Any:
    """NaN (the percentiles of a run with no audio) as null: strict JSON readers refuse NaN."""
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [no_nan(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value
