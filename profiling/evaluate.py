"""Evaluators for `profiling.search`: a candidate's knob values in, one measured run of the workload out.

`EngineEvaluator` runs the embedded engine through `profiling.run.profile_run` (so each run has its timeline, and
`profiling.signals` turns it into the evidence's figures); `UrlEvaluator` runs a remote OpenAI-compatible server
through `profiling.sweep.sweep_url`, where only the client's concurrency can change.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from engine import AudioChunk, Engine, EngineConfig, SpeechRequest
from profiling.metrics import run_metrics
from profiling.run import profile_run
from profiling.search import Abort, Measurement, Values
from profiling.signals import run_signals
from profiling.space import apply
from profiling.sweep import sweep_url
from profiling.workload import Workload


class _Arrivals:
    """The engine as the runner sees it, with each request let in at its arrival time (an open loop): the runner
    starts every request at once, and each one waits here for its moment from the first one's start."""

    def __init__(self, engine: Engine, offsets: dict[str, float]) -> None:
        self._engine, self._offsets = engine, offsets
        self._t0: float | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def generate(self, request: SpeechRequest) -> AsyncIterator[AudioChunk]:
        self._t0 = self._t0 or time.perf_counter()
        await asyncio.sleep(max(0.0, self._t0 + self._offsets[request.request_id] - time.perf_counter()))
        async for chunk in self._engine.generate(request):
            yield chunk


class EngineSource(Protocol):
    """Where the evaluator gets an engine up with a config: its own (`KeptEngines`), or the app's lab engine.
    `keep`: how many configs stay up between runs (the search's budget counts a set-up for each switch past it)."""

    keep: int

    def get(self, config: EngineConfig) -> Engine: ...

    def close(self) -> None: ...


class KeptEngines:
    """Engines of its own, built on demand; the last `keep` stay up, so repeats and the verification's alternation
    do not rebuild them (memory: one engine per kept config)."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._engines: list[tuple[EngineConfig, Engine]] = []  # oldest first

    def get(self, config: EngineConfig) -> Engine:
        for i, (kept, engine) in enumerate(self._engines):
            if kept == config:
                self._engines.append(self._engines.pop(i))
                return engine
        while len(self._engines) >= self.keep:
            self._engines.pop(0)[1].close()
        engine = Engine(config)
        self._engines.append((config, engine))
        return engine

    def close(self) -> None:
        while self._engines:
            self._engines.pop()[1].close()


class EngineEvaluator:
    """Each candidate on an engine from `engines`, warmed with the workload's first requests (every voice encoded,
    kernels warm) the first time it is met. A `model: null` config runs on `checkpoint` (default: the tiny model,
    built here once rather than by every engine)."""

    def __init__(
        self,
        base: EngineConfig,
        workload: Workload,
        *,
        engines: EngineSource | None = None,
        checkpoint: str | None = None,
        warmup: int | None = None,
        save_runs: Path | None = None,
    ) -> None:
        self.base, self.workload, self.save_runs = base, workload, save_runs
        self.engines = engines or KeptEngines()
        self.warmup = warmup if warmup is not None else max(2, workload.clips.count, workload.arrival.concurrency)
        if self.warmup < 1:
            raise ValueError(f"warmup must be at least 1 request, got {self.warmup}")
        self._warm: weakref.WeakSet[Engine] = weakref.WeakSet()
        self._runs = 0
        self._tmp: Path | None = None
        self._checkpoint = checkpoint
        if base.model is None and checkpoint is None:
            from engine.model.tiny import build_checkpoint

            self._tmp = Path(tempfile.mkdtemp(prefix="voxtrace-tune-"))
            self._checkpoint = str(build_checkpoint(self._tmp / base.tiny_task, task=base.tiny_task))

    @property
    def kept_engines(self) -> int:
        return self.engines.keep

    def config(self, values: Values) -> EngineConfig:
        """The config a candidate stands for, as the user will run it (`model: null` stays null)."""
        return apply(self.base, values)

    def measure(self, values: Values, n_requests: int) -> Measurement:
        start = time.perf_counter()
        engine = self._engine(self.config(values))
        setup_s = time.perf_counter() - start
        self._runs += 1
        requests = self.workload.requests(n_requests, _speaker(engine), f"t{self._runs}-")
        arrivals = self.workload.arrivals(n_requests)
        target: Any = engine
        if arrivals is not None:
            target = _Arrivals(engine, {r.request_id: t for r, t in zip(requests, arrivals, strict=True)})
        run_dir = self.save_runs / f"{self._runs:03d}-n{n_requests}" if self.save_runs is not None else None
        concurrency = self.workload.arrival.concurrency if arrivals is None else None
        result = profile_run(target, requests, concurrency=concurrency, run_dir=run_dir)
        # open loop: a request's time starts when it arrives at the engine (ADMITTED), not when the runner started it
        metrics = run_metrics(result.server_per_request, result.wall_s) if arrivals is not None else result.metrics
        return Measurement(
            n_requests,
            metrics.audio_s_per_s,
            metrics.ttfa_s.p99,
            metrics.underrun_s.p99,
            metrics.rtf.p99,
            errors=len(result.errors),
            error=next(iter(result.errors.values()), None),
            setup_s=setup_s,
            run_s=result.wall_s,
            signals=run_signals(result, metrics),
        )

    def _engine(self, config: EngineConfig) -> Engine:
        """The engine for `config`, warmed up the first time it is met."""
        model = self._checkpoint if config.model is None else config.model
        engine = self.engines.get(dataclasses.replace(config, model=model))
        if engine not in self._warm:
            if engine.info.task not in self.workload.tasks or len(self.workload.tasks) > 1:
                raise Abort(
                    f"the workload asks for {', '.join(self.workload.tasks)}; this checkpoint serves only "
                    f"{engine.info.task} (for the tiny model, set tiny_task in the engine config)"
                )
            warm = self.workload.requests(self.warmup, _speaker(engine), f"w{self._runs}-")
            profile_run(engine, warm, concurrency=self.workload.arrival.concurrency)
            self._warm.add(engine)
        return engine

    def close(self) -> None:
        self.engines.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> EngineEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _speaker(engine: Engine) -> str | None:
    return engine.info.speakers[0] if engine.info.speakers else None


class UrlEvaluator:
    """A remote speech server: its engine is not ours to configure, so the only knob is the client's
    `concurrency`, and there is no timeline to quote (the measurements carry no signals). Closed loop only."""

    kept_engines = 2  # the server stays up: changing the concurrency sets nothing up

    def __init__(self, url: str, workload: Workload, *, voice: str | None = None, warmup: int = 2,
                 sample_rate: int = 24000) -> None:  # fmt: skip
        if workload.arrival.pattern != "closed":
            raise ValueError("against a URL only a closed-loop workload runs (the client sets the concurrency)")
        self.url, self.workload, self.voice, self.sample_rate = url, workload, voice, sample_rate
        self._warmup = warmup

    def measure(self, values: Values, n_requests: int) -> Measurement:
        def bodies(n: int, offset: int) -> list[dict[str, Any]]:
            return self.workload.bodies(n, self.voice)  # request i is the same in every run

        (level,) = sweep_url(self.url, bodies, [int(values["concurrency"])], n_requests, warmup=self._warmup,
                             sample_rate=self.sample_rate)  # fmt: skip
        self._warmup = 0  # the server stays up between runs: warm it once
        m = level.metrics
        return Measurement(
            n_requests,
            m.audio_s_per_s,
            m.ttfa_s.p99,
            m.underrun_s.p99,
            m.rtf.p99,
            errors=len(level.errors),
            error=level.errors[0] if level.errors else None,
            run_s=m.wall_s,
        )
