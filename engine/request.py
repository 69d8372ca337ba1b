"""What crosses the engine's public edge: a speech request in, audio chunks out, and the errors in between."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from engine.config import LimitsConfig
from engine.model.sampling import SamplingError, SamplingParams


class Task(StrEnum):
    """What a request asks for. Each checkpoint type serves one task; `model_type` names it (the checkpoint's
    `tts_model_type`, also the tiny builder's task). A `Task` is a `str`, so it goes wherever a task name went."""

    VOICE_CLONE = "voice_clone"
    CUSTOM_VOICE = "custom_voice"
    VOICE_DESIGN = "voice_design"

    @property
    def model_type(self) -> str:
        return "base" if self is Task.VOICE_CLONE else self.value

    @classmethod
    def of_model_type(cls, model_type: str) -> Task:
        return next(task for task in cls if task.model_type == model_type)


TASKS = tuple(Task)
MAX_NAME_CHARS = 64  # task, language, speaker: names, echoed in errors
MAX_REQUEST_ID_CHARS = 128
MAX_SEED = 2**63 - 1


class RequestError(ValueError):
    """A request refused at the edge; `field` names the offending field (as the HTTP API reports it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class EngineError(RuntimeError):
    """A request that was accepted but could not be completed (a worker died, the engine closed)."""


class EngineBusy(EngineError):
    """More requests than the engine admits at once (running batch + waiting queue); try again later."""


class StageUnavailable(EngineError):
    """A stage has no live worker right now (it is being replaced, or could not be); `stage` names it. Requests fail
    fast with this rather than wait, and the HTTP API answers 503."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class ModelInfo:
    """What a front end may know of the loaded checkpoint (`Engine.info`): everything it offers and defaults to."""

    task: Task
    languages: tuple[str, ...]
    speakers: tuple[str, ...]  # custom_voice: the checkpoint's speakers; else empty
    sample_rate: int
    sampling_defaults: SamplingParams  # the checkpoint's generation_config.json
    tiny: bool  # the embedded random model: its audio is noise, its timings are real


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
    max_new_tokens: int | None = None  # above the engine's limit: refused; None: the sampling settings', capped by it
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


def check_request(request: SpeechRequest, limits: LimitsConfig) -> None:
    """Every field's type and size, before any work is spent on the request (no tokenizing, no decoding): a
    `RequestError` names the first bad field as the HTTP API calls it. What depends on the loaded checkpoint (task,
    language, speaker) is checked by prompt prep."""
    rid = request.request_id
    if not isinstance(rid, str) or not 0 < len(rid) <= MAX_REQUEST_ID_CHARS:
        raise RequestError("request_id", f"must be text of 1 to {MAX_REQUEST_ID_CHARS} characters")
    _check_text("input", request.text, limits.max_text_chars)
    _check_text("language", request.language, MAX_NAME_CHARS)
    for name, value, limit in (
        ("task", request.task, MAX_NAME_CHARS),
        ("voice", request.speaker, MAX_NAME_CHARS),
        ("instructions", request.instruct, limits.max_instruct_chars),
        ("ref_text", request.ref_text, limits.max_ref_text_chars),
    ):
        if value is not None:
            _check_text(name, value, limit)
    if not isinstance(request.x_vector_only, bool):
        raise RequestError("x_vector_only_mode", "must be true or false")
    if request.non_streaming_mode is not None and not isinstance(request.non_streaming_mode, bool):
        raise RequestError("non_streaming_mode", "must be true or false")
    audio = request.ref_audio
    if not (audio is None or isinstance(audio, (bytes, bytearray, memoryview)) or _is_waveform(audio)):
        raise RequestError("ref_audio", "must be the bytes of an audio file, or (samples, sample_rate)")
    if request.sampling is not None:
        if not isinstance(request.sampling, SamplingParams):
            raise RequestError("sampling", "must be sampling settings")
        try:  # re-checked: the settings may have been changed after they were built
            dataclasses.replace(request.sampling)
        except SamplingError as exc:
            raise RequestError(exc.field, exc.message) from None
    _check_whole("seed", request.seed, 0, MAX_SEED)
    _check_whole("max_new_tokens", request.max_new_tokens, 1, limits.max_new_tokens, "this engine's limit")


def _check_text(name: str, value: object, limit: int) -> None:
    if not isinstance(value, str):
        raise RequestError(name, "must be text")
    if len(value) > limit:  # before anything reads it all
        raise RequestError(name, f"has {len(value)} characters; the limit is {limit}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(name, f"is not valid Unicode (a lone surrogate at character {exc.start})") from None


def _check_whole(name: str, value: object, low: int, high: int, high_is: str = "") -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(name, "must be a whole number")
    if value < low:
        raise RequestError(name, f"must be at least {low}, got {value}")
    if value > high:
        raise RequestError(name, f"must be at most {high}{f' ({high_is})' if high_is else ''}, got {value}")


def _is_waveform(audio: object) -> bool:
    return isinstance(audio, tuple) and len(audio) == 2 and isinstance(audio[1], (int, np.integer))
