"""What crosses the engine's public edge: a speech request in, audio chunks out, and the errors in between."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from engine.model.sampling import SamplingParams


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

    @classmethod
    def named(cls, name: str) -> Task:
        """A task by its name or by the checkpoint type that serves it, as other Qwen3-TTS servers spell `task_type`
        ("Base", "CustomVoice", "VoiceDesign"): case, "_" and "-" do not matter. A `ValueError` for any other name."""
        key = _squashed(name)
        for task in cls:
            if key in (_squashed(task.value), _squashed(task.model_type)):
                return task
        raise ValueError(f"{name!r} is not one of {', '.join(cls)}")


def _squashed(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


TASKS = tuple(Task)


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
    # above the engine's limit: refused; None: the sampling settings', capped by it (random weights: the text's length)
    max_new_tokens: int | None = None
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
