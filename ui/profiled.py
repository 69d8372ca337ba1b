"""The app's one door into profiled runs: every view calls `run_requests` and `sweep` here, which use the
profiler's runner (`profiling.run.profile_run_async`, `profiling.sweep.sweep_engine`), and gets back what it draws and
what the user downloads.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import AudioChunk, Engine, EngineConfig, SpeechRequest
from profiling.gpu_idle import IdleSplit
from profiling.metrics import RequestBreakdown, RequestMetrics, RunMetrics
from profiling.run import profile_run_async
from profiling.sweep import Bench, sweep_engine
from telemetry.events import Timeline

OnChunk = Callable[[AudioChunk], None]


@dataclass
class RunOutcome:
    """One profiled run: what the views draw and what the user downloads."""

    label: str
    timeline: Timeline
    requests: list[RequestMetrics]
    run: RunMetrics
    breakdowns: dict[str, RequestBreakdown]
    wavs: dict[str, np.ndarray]  # request id -> its audio
    seeds: dict[str, int | None]
    sample_rate: int
    errors: dict[str, str] = field(default_factory=dict)  # request id -> why it failed
    files: dict[str, Path] = field(default_factory=dict)  # audio, trace (Perfetto JSON), tensorboard (zip), metrics
    gpu_idle: IdleSplit | None = None  # a torch capture of a CUDA run
    cpu_percent: float = float("nan")  # mean CPU % of the engine's processes together (100 = one core)
    gpu_busy_percent: float = float("nan")  # mean NVML busy % over the GPUs; NaN without one


class _Tap:
    """The engine as the runner sees it, with each chunk also handed to `on_chunk` (the live player) and the seed
    each request used noted down (it rides on every chunk)."""

    def __init__(self, engine: Engine, on_chunk: OnChunk | None) -> None:
        self._engine, self._on_chunk = engine, on_chunk
        self.seeds: dict[str, int | None] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def generate(self, request: SpeechRequest) -> AsyncIterator[AudioChunk]:
        async for chunk in self._engine.generate(request):
            self.seeds[request.request_id] = chunk.seed
            if self._on_chunk is not None:
                self._on_chunk(chunk)
            yield chunk


async def run_requests(
    engine: Engine,
    requests: Sequence[SpeechRequest],
    run_dir: Path,
    concurrency: int = 1,
    label: str = "run",
    on_chunk: OnChunk | None = None,
    torch_capture: bool = False,
) -> RunOutcome:
    """Send `requests` with at most `concurrency` in flight; the run's files go under `run_dir`."""
    tap = _Tap(engine, on_chunk)
    result = await profile_run_async(tap, requests, concurrency=concurrency, capture=torch_capture, run_dir=run_dir)
    files = {"trace": run_dir / "trace.json", "metrics": run_dir / "metrics.json"}
    audio = sorted((run_dir / "audio").glob("*.wav"))
    if len(audio) == 1:
        files["audio"] = audio[0]
    if torch_capture and any(run_dir.glob("tb/*.json")):
        files["tensorboard"] = Path(shutil.make_archive(str(run_dir / "tensorboard"), "zip", run_dir, "tb"))
    return RunOutcome(
        label=label,
        timeline=result.timeline,
        requests=result.per_request,
        run=result.metrics,
        breakdowns=result.breakdowns,
        wavs=result.audio,
        seeds={rid: tap.seeds.get(rid) for rid in result.requests},
        sample_rate=result.sample_rate,
        errors=result.errors,
        files=files,
        gpu_idle=result.gpu_idle,
        cpu_percent=result.cpu_percent,
        gpu_busy_percent=result.gpu_busy_mean_percent,
    )


async def sweep(
    configs: dict[str, EngineConfig],
    concurrencies: Sequence[int],
    make_requests: Callable[[EngineConfig, int, int], list[SpeechRequest]],
    requests_per_level: int,
    run_dir: Path,
    engine_for: Callable[[EngineConfig], AbstractAsyncContextManager[Engine]],
    progress: Callable[[float, str], None] | None = None,
) -> tuple[Bench, dict[str, Path]]:
    """Each config in turn on the engine `engine_for(config)` gives, each concurrency level in turn
    (`make_requests(config, n, offset)` gives a level's requests); writes the runner's bench.json, bench.csv and
    bench.html under `run_dir`."""
    levels = []
    total = len(configs) * len(concurrencies) * requests_per_level
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done / total, f"{done}/{total} requests")

    for label, config in configs.items():
        if progress is not None:
            progress(done / total, f"starting the {label} engine")
        async with engine_for(config) as engine:
            jobs = functools.partial(make_requests, config)
            levels += await asyncio.to_thread(
                sweep_engine, engine, jobs, concurrencies, requests_per_level, label=label, progress=tick
            )
    bench = Bench(levels, {"target": "Concurrency sweep", "configs": list(configs)})
    return bench, bench.write(run_dir)
