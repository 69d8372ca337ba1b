"""What crosses the engine's public edge: a speech request in, audio chunks out, and the errors in between."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np

from engine.model.sampling import SamplingParams

TASKS = ("voice_clone", "custom_voice", "voice_design")


class RequestError(ValueError):
    """A request refused at the edge; `field` names the offending field (as the HTTP API reports it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class EngineError(RuntimeError):
    """A request that was accepted but could not be completed (a worker died, the engine closed)."""


class StageUnavailable(EngineError):
    """A stage has no live worker right now (it is being replaced, or could not be); `stage` names it. Requests fail
    fast with this rather than wait, and the HTTP API answers 503."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass
class SpeechRequest:
    """One synthesis request. `task` None means the loaded checkpoint's task. Reference audio comes as the bytes of
    an audio file (wav/flac/ogg) or as (samples, sample_rate); it is decoded, downmixed and resampled at the edge."""

    text: str
    task: str | None = None
    language: str = "auto"
    speaker: str | None = None
    instruct: str | None = None
    ref_audio: bytes | tuple[np.ndarray, int] | None = None
    ref_text: str | None = None
    x_vector_only: bool = False
    non_streaming_mode: bool | None = None  # None: the official default of the task
    sampling: SamplingParams | None = None  # None: the checkpoint's generation_config.json
    seed: int | None = None  # None with sampling: the engine picks one and reports it on every chunk
    max_new_tokens: int | None = None  # None: the sampling settings' limit, capped by the engine's
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])


@dataclass
class AudioChunk:
    """A piece of one request's audio stream, in order. Times are `time.perf_counter_ns()` of the engine's clock."""

    request_id: str
    index: int
    samples: np.ndarray  # (n,) float32
    sample_rate: int
    start_sample: int  # offset of this chunk in the request's audio
    frames: int  # codec frames (80 ms each) this chunk decodes
    is_last: bool
    seed: int | None
    submitted_ns: int  # when the request entered the engine
    emitted_ns: int  # when this chunk was handed to the caller

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate
