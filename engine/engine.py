"""`Engine`: the public API. A request is validated and prepared here, then flows talker -> Code2Wav as code chunks
and comes back as audio chunks, each stage running under its configured executor (`uni` thread or `mp` worker).

Routing is a star: every stage output comes back to the engine's process, which forwards code chunks to Code2Wav and
audio to the request's stream. Each stream is bounded by credits (chunks it may have in flight), granted back as its
listener consumes, so a slow listener pauses only its own talker row.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from engine.config import EngineConfig
from engine.model.qwen3_tts import Qwen3TTS, VoicePrompt
from engine.model.tiny import build_checkpoint
from engine.prep import PromptPrep
from engine.request import AudioChunk, EngineError, RequestError, SpeechRequest
from engine.runtime import Executor, ExecutorError, TransportError, make_executor
from engine.stages.factory import StageSpec, build_from_model, build_in_worker
from engine.stages.messages import AudioOut, Cancel, CodeChunk, Credit, Failed, StageOutput, TalkerJob, WarmPrefix
from profiling.events import (
    ADMITTED,
    AUDIO_CHUNK,
    ENGINE,
    FINISHED,
    FIRST_AUDIO,
    IN_FLIGHT,
    LAST_AUDIO,
    PROMPT_PREP,
    PROMPT_READY,
    EventBatch,
    Timeline,
    get_recorder,
    merge_timelines,
    now_ns,
)

if TYPE_CHECKING:
    from profiling.trace import TorchCapture, TorchTrace

STAGE_RESTART_TIMEOUT_S = 600.0


class EngineBusy(EngineError):
    """More requests than the engine admits at once (running batch + waiting queue); try again later."""


@dataclass
class _Stream:
    """The engine's side of one request's audio stream."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    finished: bool = False

    def put(self, item: AudioOut | Exception) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


@dataclass
class Synthesis:
    """The blocking helper's result: the whole waveform and the chunks it streamed as."""

    wav: np.ndarray
    chunks: list[AudioChunk]
    sample_rate: int


class Engine:
    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        self._tmp: Path | None = None
        checkpoint = config.model
        if checkpoint is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="voxtrace-tiny-"))
            checkpoint = str(build_checkpoint(self._tmp / config.tiny_task, task=config.tiny_task))
        self.checkpoint = checkpoint
        uni_threads = [s.threads for s in (config.talker, config.code2wav) if s.executor == "uni"]
        if uni_threads:  # torch threads are per process: the uni stages share the engine's
            torch.set_num_threads(max(uni_threads))
        dtype = getattr(torch, config.dtype) if config.dtype else None
        self.model = Qwen3TTS.from_pretrained(checkpoint, device=config.device, dtype=dtype)
        # an `mp` stage loads its own weights: before its worker starts, this process lets go of them
        self.model.release(talker=config.talker.executor == "mp", decoder=config.code2wav.executor == "mp")
        self.prep = PromptPrep(self.model, config.limits, int(config.voice_cache_mb * 2**20))
        self._prep_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prompt-prep")
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.recorder = get_recorder()
        self._capture: TorchCapture | None = None
        self._stages: dict[str, Executor] = {}
        self._ready: dict[str, threading.Event] = {}  # cleared while a dead stage's worker is being replaced
        try:
            for kind, stage in (("code2wav", config.code2wav), ("talker", config.talker)):
                spec = StageSpec(kind, checkpoint, config.device, config.dtype, stage, config.chunking)
                factory = (
                    functools.partial(build_in_worker, spec)
                    if stage.executor == "mp"
                    else functools.partial(build_from_model, self.model, spec)
                )
                on_output = self._from_talker if kind == "talker" else self._from_code2wav
                on_death = functools.partial(self._on_death, kind)
                executor = make_executor(
                    stage.executor, factory, on_output, kind, stage.threads, on_death, ring_bytes=stage.ring_mb * 2**20
                )
                executor.start()
                self._stages[kind] = executor
                self._ready[kind] = threading.Event()
                self._ready[kind].set()
        except BaseException:
            self.close()
            raise

    # -- public API ---------------------------------------------------------------------------------------------

    async def generate(self, request: SpeechRequest) -> AsyncIterator[AudioChunk]:
        """The request's audio as it is made. Raises `RequestError` (bad input, before any audio), `EngineBusy`,
        or `EngineError` (the request could not be completed). Closing the iterator early cancels the request."""
        rid, submitted = request.request_id, now_ns()
        rec = self.recorder
        rec.instant(ADMITTED, request=rid)
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:
                raise EngineError("the engine is closed")
            if rid in self._streams:
                raise RequestError("request_id", f"{rid!r} is already in flight")
            bound = self.config.talker.max_num_seqs + self.config.limits.max_waiting
            if len(self._streams) >= bound:
                raise EngineBusy(f"the engine is busy: {len(self._streams)} requests in flight (limit {bound})")
            stream = self._streams[rid] = _Stream(loop)
            rec.counter(IN_FLIGHT, len(self._streams), track=ENGINE)
        try:
            start = now_ns()
            job = await loop.run_in_executor(self._prep_pool, self._prepare, request)
            rec.record_span(PROMPT_PREP, ENGINE, start, request=rid)
            rec.instant(PROMPT_READY, request=rid)
            self._stages["talker"].submit(job)
            offset = 0
            while True:
                item = await stream.queue.get()
                if isinstance(item, Exception):
                    raise item
                if item.index == 0:
                    rec.instant(FIRST_AUDIO, request=rid)
                if not item.is_last:
                    self._stages["talker"].submit(Credit(rid))
                samples = item.samples.numpy()
                rec.instant(AUDIO_CHUNK, request=rid, samples=len(samples))
                chunk = AudioChunk(
                    rid,
                    item.index,
                    samples,
                    self.model.sample_rate,
                    offset,
                    item.frames,
                    item.is_last,
                    job.seed,
                    submitted,
                    now_ns(),
                )
                offset += len(samples)
                if item.is_last:
                    stream.finished = True
                    rec.instant(LAST_AUDIO, request=rid)
                yield chunk
                if item.is_last:
                    return
        finally:
            self._end(rid, cancel=not stream.finished)
            rec.instant(FINISHED, request=rid)

    def ready(self) -> dict[str, bool]:
        """Stage name -> whether it has a live worker (or thread) now: what `GET /ready` reports."""
        return {kind: self._ready[kind].is_set() and s.alive for kind, s in self._stages.items()}

    def prepare_voice(self, ref_audio: bytes, x_vector_only: bool = False) -> Future[VoicePrompt]:
        """Put a clip through the encoders now, on the prompt-prep thread, so that the first request cloning it finds
        its voice cached (the app calls this when a clip is uploaded, while the user still types). The future raises
        `RequestError` for a clip that a request would be refused for."""
        if self._closed:
            raise EngineError("the engine is closed")
        return self._prep_pool.submit(self._prepare_voice, ref_audio, not x_vector_only)

    def _prepare_voice(self, ref_audio: bytes, icl: bool) -> VoicePrompt:
        """Encode the clip; for ICL also have code2wav decode its reference codes into its prefix cache (best effort:
        a stage being replaced just misses the hint)."""
        voice = self.prep.encode(ref_audio, icl)
        if voice.ref_codes is not None and self._ready["code2wav"].is_set():
            with contextlib.suppress(ExecutorError, TransportError):
                self._stages["code2wav"].submit(WarmPrefix(voice.ref_codes.cpu()))
        return voice

    def synthesize(self, request: SpeechRequest) -> Synthesis:
        """Blocking helper: the whole waveform of one request (call it from code with no running event loop)."""

        async def collect() -> list[AudioChunk]:
            return [chunk async for chunk in self.generate(request)]

        chunks = asyncio.run(collect())
        wav = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)
        return Synthesis(wav, chunks, self.model.sample_rate)

    def _prepare(self, request: SpeechRequest) -> TalkerJob:
        """Prompt prep, then wait (bounded) for any stage whose worker is being replaced after a death."""
        job = self.prep.prepare(request)
        for kind, ready in self._ready.items():
            if not ready.wait(STAGE_RESTART_TIMEOUT_S):
                raise EngineError(f"the {kind} stage did not come back after its worker died")
        return job

    def timeline(self) -> Timeline:
        """Every process's events since the last call, merged on the shared clock (drains the recorders)."""
        batches = [self.recorder.drain_batch()]
        batches += [s.drain_events() for s in self._stages.values() if s.alive]
        return merge_timelines(b for b in batches if isinstance(b, EventBatch))

    # -- profiling controls ----------------------------------------------------------------------------------------

    def worker_pids(self) -> dict[str, int]:
        """Stage name -> pid of its worker process (`mp` stages only; `uni` stages run in this process)."""
        return {kind: pid for kind, s in self._stages.items() if s.alive and (pid := s.pid) is not None}

    def set_recording(self, enabled: bool) -> None:
        """Event recording on or off in every engine process (on by default; off measures what it costs)."""
        self.recorder.enabled = enabled
        for stage in self._stages.values():
            stage.set_recording(enabled)

    def start_capture(self, run_dir: str | Path) -> Path:
        """torch.profiler in every process that runs a stage; traces go to `<run_dir>/tb/<process>.<ns>.pt.trace.json`
        (TensorBoard's profiler plugin: logdir `run_dir`, run `tb`). Returns the tb folder."""
        from torch._C._profiler import _ExperimentalConfig

        from profiling.trace import TorchCapture

        if self._capture is not None:
            raise EngineError("a torch.profiler capture is already running")
        tb_dir = Path(run_dir) / "tb"
        self._capture = TorchCapture(tb_dir, "engine", self.recorder)
        # `uni` stages are threads started before the capture: only a profiler on all threads sees their ops
        self._capture.options["experimental_config"] = _ExperimentalConfig(profile_all_threads=True)
        self._capture.start()
        try:
            for stage in self._stages.values():
                stage.start_capture(str(tb_dir))
        except BaseException:
            self.stop_capture()
            raise
        return tb_dir

    def stop_capture(self) -> list[TorchTrace]:
        """Stop every capture started by `start_capture`; the traces, for `profiling.trace.chrome_trace`."""
        capture, self._capture = self._capture, None
        if capture is None:
            return []
        traces = [capture.stop()]
        for stage in self._stages.values():
            trace = stage.stop_capture()
            if trace is not None:
                traces.append(trace)
        return traces

    def close(self) -> None:
        """Fail whatever is in flight, stop every stage (workers, threads, shared memory) and remove temp files."""
        with self._lock:
            self._closed = True
            streams, self._streams = dict(self._streams), {}
        if self._capture is not None:  # a capture left running: stop this process's profiler
            self._capture.stop()
            self._capture = None
        for stream in streams.values():
            stream.put(EngineError("the engine was closed"))
        for executor in self._stages.values():
            executor.close()
        self._prep_pool.shutdown(wait=False, cancel_futures=True)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- routing (called from stage threads) ----------------------------------------------------------------------

    def _from_talker(self, out: StageOutput) -> None:
        if isinstance(out, CodeChunk):
            if out.request_id in self._streams:
                try:
                    self._stages["code2wav"].submit(out)
                except (ExecutorError, TransportError) as exc:  # code2wav is down or the chunk cannot travel
                    self._fail(Failed(out.request_id, f"could not hand the chunk to code2wav: {exc}"))
                    self._stages["talker"].submit(Cancel(out.request_id))
        else:
            self._fail(out)

    def _from_code2wav(self, out: StageOutput) -> None:
        if isinstance(out, AudioOut):
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.put(out)
        else:
            self._fail(out)

    def _fail(self, out: StageOutput) -> None:
        assert isinstance(out, Failed)
        stream = self._streams.get(out.request_id)
        if stream is not None:
            stream.put(EngineError(f"request {out.request_id} failed: {out.message}"))

    def _on_death(self, kind: str, reason: str) -> None:
        """A stage worker died: fail the requests it held (the others go on), then start a fresh one."""
        executor = self._stages[kind]
        self._ready[kind].clear()
        for rid in executor.in_flight():
            stream = self._streams.get(rid)
            if stream is not None:
                stream.put(EngineError(f"the {kind} worker died while serving this request ({reason.strip()})"))
        if not self._closed:
            executor.restart()
            self._ready[kind].set()

    def _end(self, rid: str, cancel: bool) -> None:
        with self._lock:
            self._streams.pop(rid, None)
            self.recorder.counter(IN_FLIGHT, len(self._streams), track=ENGINE)
        if cancel and not self._closed:
            for executor in self._stages.values():
                if executor.alive:
                    executor.submit(Cancel(rid))
