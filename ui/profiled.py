"""The app's one door into profiled runs: every view calls `run_requests`, `run_url` and `sweep` here, which use the
profiler's runners (`profiling.run.profile_run_async`, `profiling.speech_client.profile_url_async`,
`profiling.sweep.sweep_engine`), and gets back what it draws and what the user downloads.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import AudioChunk, Engine, EngineConfig, SpeechRequest
from profiling.run import RunResult, profile_run_async
from profiling.speech_client import profile_url_async
from profiling.sweep import Bench, sweep_engine
from ui.heard import Heard

OnChunk = Callable[[AudioChunk], None]
Progress = Callable[[int, int], None]  # (requests done, total)


@dataclass
class ProfiledRun:
    """One profiled run as a view shows it: the runner's `RunResult`, and beside it what the result does not hold:
    which run it is on the page, the seed each request used (it rides on every chunk), the files to download and what
    the listener heard."""

    label: str
    result: RunResult
    seeds: dict[str, int | None]  # request id -> the seed it sampled with (None: greedy)
    files: dict[str, Path] = field(default_factory=dict)  # audio, trace (Perfetto JSON), tensorboard (zip), metrics
    heard: Heard | None = None  # what the page's player heard, when it played the run


async def run_requests(
    engine: Engine,
    requests: Sequence[SpeechRequest],
    run_dir: Path,
    concurrency: int = 1,
    label: str = "run",
    on_chunk: OnChunk | None = None,
    torch_capture: bool = False,
    wav_subtype: str = "PCM_16",
    progress: Progress | None = None,
) -> ProfiledRun:
    """Send `requests` with at most `concurrency` in flight, each chunk also handed to `on_chunk` (the live player)
    as it arrives, `progress` told as each request ends; the run's files go under `run_dir` (its WAVs as
    `wav_subtype`: 16-bit PCM, or "FLOAT")."""
    seeds: dict[str, int | None] = {r.request_id: None for r in requests}

    def seen(chunk: AudioChunk) -> None:
        seeds[chunk.request_id] = chunk.seed
        if on_chunk is not None:
            on_chunk(chunk)

    result = await profile_run_async(
        engine,
        requests,
        concurrency=concurrency,
        capture=torch_capture,
        run_dir=run_dir,
        on_chunk=seen,
        wav_subtype=wav_subtype,
        progress=progress,
    )
    files = _files(run_dir)
    if torch_capture and any(run_dir.glob("tb/*.json")):
        files["tensorboard"] = Path(shutil.make_archive(str(run_dir / "tensorboard"), "zip", run_dir, "tb"))
    return ProfiledRun(label, result, seeds, files)


async def run_url(
    url: str,
    bodies: Sequence[dict[str, Any]],
    run_dir: Path,
    sample_rate: int,
    concurrency: int = 1,
    label: str = "run",
    progress: Progress | None = None,
) -> ProfiledRun:
    """`bodies` sent to an OpenAI-compatible speech server, measured by the client as `run_requests` measures our
    engine; the same files under `run_dir` (the timeline holds what the client saw)."""
    result = await profile_url_async(
        url, bodies, concurrency=concurrency, sample_rate=sample_rate, run_dir=run_dir, progress=progress
    )
    seeds = {rid: body.get("seed") for rid, body in zip(result.requests, bodies, strict=True)}
    return ProfiledRun(label, result, seeds, _files(run_dir))


def _files(run_dir: Path) -> dict[str, Path]:
    """A run folder's downloads (as `profiling.run.write_run` wrote them): trace, metrics, a lone request's audio."""
    files = {"trace": run_dir / "trace.json", "metrics": run_dir / "metrics.json"}
    audio = sorted((run_dir / "audio").glob("*.wav"))
    if len(audio) == 1:
        files["audio"] = audio[0]
    return files


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
