"""`Engine`: the public API. A request is validated and prepared here, then flows talker -> Code2Wav as code chunks
and comes back as audio chunks, each stage running under its configured executor (`uni` thread or `mp` worker).

Three beats: admit (check the fields, take a place, prepare the prompt on the prep thread), step the stages (their
executors), route the results (`engine.router.Router`: the places, the paths between the stages, credits, deaths;
one per replica, `engine.replicas.Replicas`, which sends each request to the least loaded).
What a profiler may ask of the engine's processes is `Engine.probe` (`engine.runtime.probe`).

Failures stay small: a bad field is refused before the request takes a place (`RequestError`); a stage that fails one
request fails only that one; a dead worker fails the requests it held and is replaced on a thread of its own
(`runtime.restarter`), while new requests fail fast (`StageUnavailable`) instead of waiting. What a client reads is a
short message; the detail (tracebacks, exit status) goes to the log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from engine.config import EngineConfig
from engine.memory import MemoryPlan, plan_memory
from engine.model.loading import find_checkpoint
from engine.model.qwen3_tts import Qwen3TTS, VoicePrompt
from engine.model.tiny import build_checkpoint
from engine.prep import PromptPrep
from engine.replicas import Replicas
from engine.request import AudioChunk, EngineError, ModelInfo, RequestError, SpeechRequest, Task
from engine.runtime import Executor, ray_cluster
from engine.runtime.probe import Probe
from engine.runtime.serial import SerialExecutor
from engine.stages.factory import StageSpec, build_from_model, build_in_worker
from engine.stages.messages import TalkerJob, WarmPrefix
from telemetry.events import (
    ADMITTED,
    AUDIO_CHUNK,
    ENGINE,
    FINISHED,
    FIRST_AUDIO,
    LAST_AUDIO,
    PROMPT_PREP,
    PROMPT_READY,
    get_recorder,
    now_ns,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


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
        try:  # sized before any weight is loaded: a shape that cannot fit is refused in a second, not after the load
            self.memory: MemoryPlan = plan_memory(config, find_checkpoint(checkpoint))
        except BaseException:
            self._remove_tmp()
            raise
        self.config = config = self.memory.apply(config)
        log.info("%s", self.memory.describe())
        uni_threads = [s.threads for s in (config.talker, config.code2wav) if s.executor == "uni"]
        if uni_threads:  # torch threads are per process: the uni stages share the engine's
            torch.set_num_threads(max(uni_threads))
        dtype = getattr(torch, config.dtype) if config.dtype else None
        self.model = Qwen3TTS.from_pretrained(checkpoint, device=config.device, dtype=dtype)
        # an `mp` or `ray` stage loads its own weights: before its worker starts, this process lets go of them
        self.model.release(talker=config.talker.executor != "uni", decoder=config.code2wav.executor != "uni")
        model = self.model
        self.info = ModelInfo(
            Task.of_model_type(model.model_type),
            tuple(model.languages),
            tuple(model.speakers),
            model.sample_rate,
            model.sampling_defaults,
            tiny=config.model is None,
        )
        self.prep = PromptPrep(
            self.model, config.limits, int(config.voice_cache_mb * 2**20), random_weights=self.info.tiny
        )
        self._prep = SerialExecutor("prompt-prep")
        self.recorder = get_recorder()
        places = config.talker.max_num_seqs + config.limits.max_waiting
        self.router = Replicas(config.replicas, places, config.talker.max_num_seqs, self.recorder)
        self.stages: dict[str, Executor] = {}  # every replica's, by name: what the probe asks
        self.probe = Probe(self.stages, self.recorder)
        configs = {"talker": config.talker, "code2wav": config.code2wav}
        factories = {}
        for kind, stage in configs.items():
            spec = StageSpec(kind, checkpoint, config.device, config.dtype, stage, config.chunking, config.decode)
            build = functools.partial(build_from_model, self.model) if stage.executor == "uni" else build_in_worker
            factories[kind] = functools.partial(build, spec)
        self._ray = False  # holds a use of the Ray connection (`ray_cluster`)
        try:
            if any(stage.executor == "ray" for stage in configs.values()):
                ray_cluster.acquire(config.ray)
                self._ray = True
            self.router.start(configs, factories, config.direct_link, config.ray)
            self.stages.update(self.router.stages)
        except BaseException:
            self.close()
            raise

    # -- public API ---------------------------------------------------------------------------------------------

    async def generate(self, request: SpeechRequest) -> AsyncIterator[AudioChunk]:
        """The request's audio as it is made. Raises `RequestError` (bad input, before any audio), `EngineBusy`,
        `StageUnavailable` (a stage has no worker now: try again later), or `EngineError` (the request could not be
        completed). Closing the iterator, or cancelling its task, cancels the request at once, wherever it is."""
        rid, submitted = request.request_id, now_ns()
        rec = self.recorder
        self.prep.check(request)  # cheap: a bad field never waits behind the prep thread
        rec.instant(ADMITTED, request=rid)
        stream = self.router.admit(rid)
        try:
            start = now_ns()
            stream.prep = self._prep.submit(self._on_prep_thread, f"request {rid}", self._prepare, request)
            stream.prep.add_done_callback(stream.prepared)
            job = await stream.queue.get()
            if isinstance(job, Exception):
                raise job
            rec.record_span(PROMPT_PREP, ENGINE, start, request=rid)
            rec.instant(PROMPT_READY, request=rid)
            self.router.run(job)
            offset = 0
            while True:
                item = await stream.queue.get()
                if isinstance(item, Exception):
                    raise item
                if item.index == 0:
                    rec.instant(FIRST_AUDIO, request=rid)
                self.router.consumed(item)
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
            self.router.end(rid, cancel=not stream.finished)
            rec.instant(FINISHED, request=rid)

    @property
    def requests_in_flight(self) -> int:
        """Requests admitted and not yet ended (each holds one of the engine's places)."""
        return len(self.router.streams)

    def ready(self) -> dict[str, bool]:
        """Stage name -> whether it has a live worker (or thread) now: what `GET /ready` reports."""
        return self.router.ready()

    def prepare_voice(self, ref_audio: bytes, x_vector_only: bool = False) -> Future[VoicePrompt]:
        """Put a clip through the encoders now, on the prompt-prep thread, so that the first request cloning it finds
        its voice cached (the app calls this when a clip is uploaded, while the user still types). The future raises
        `RequestError` for a clip that a request would be refused for."""
        if self.router.closed:
            raise EngineError("the engine is closed")
        return self._prep.submit(
            self._on_prep_thread, "a voice prepared ahead", self._prepare_voice, ref_audio, not x_vector_only
        )

    def _prepare(self, request: SpeechRequest) -> TalkerJob:
        """The request's job; an ICL one's reference codes go to code2wav at once, so that it decodes them while the
        talker prefills, not when the first chunk comes (code2wav skips a prefix it holds or is decoding already)."""
        job = self.prep.prepare(request)
        if job.ref_codes is not None:
            self.router.warm(WarmPrefix(job.ref_codes.cpu()), request.request_id)
        return job

    def _prepare_voice(self, ref_audio: bytes, icl: bool) -> VoicePrompt:
        """Encode the clip; for ICL also have code2wav decode its reference codes into its prefix cache (best effort:
        a stage being replaced just misses the hint)."""
        voice = self.prep.encode(ref_audio, icl)
        if voice.ref_codes is not None:
            self.router.warm(WarmPrefix(voice.ref_codes.cpu()))
        return voice

    @staticmethod
    def _on_prep_thread(what: str, work: Callable[..., T], *args: object) -> T:
        """Prep work for `what`: a refusal names its field; anything else is our bug, logged with its traceback,
        and the client reads a short message."""
        try:
            return work(*args)
        except RequestError:
            raise
        except Exception:
            log.exception("%s: prompt prep failed", what)
            raise EngineError("the prompt could not be prepared") from None

    def synthesize(self, request: SpeechRequest) -> Synthesis:
        """Blocking helper: the whole waveform of one request (call it from code with no running event loop)."""

        async def collect() -> list[AudioChunk]:
            return [chunk async for chunk in self.generate(request)]

        chunks = asyncio.run(collect())
        wav = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)
        return Synthesis(wav, chunks, self.model.sample_rate)

    def close(self, grace_s: float | None = None) -> None:
        """End every stream in flight with an `EngineError` at once, then stop every stage: each worker is asked to
        stop and, past the grace, terminated and killed; threads are joined, rings unlinked, temp files removed.
        `grace_s` (default: the config's `close_grace_s`) bounds the whole. Idempotent."""
        grace = self.config.close_grace_s if grace_s is None else grace_s
        deadline = time.monotonic() + grace

        def left() -> float:
            return max(deadline - time.monotonic(), 0.0)

        self.probe.close()
        self.router.close(left)
        self._prep.close(left())
        if self._ray:
            self._ray = False
            ray_cluster.release()
        self._remove_tmp()

    def _remove_tmp(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
