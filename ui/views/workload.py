"""The requests of a Compare or Benchmark run, from a few page inputs: the serving checkpoint's task (the tiny
model's per config), its first speaker, x-vector cloning from an uploaded clip or a test tone."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf

from engine import EngineConfig, ModelInfo, SamplingParams, SpeechRequest, Task
from profiling.bench.prompt_set import TASK_TYPES


@dataclass
class Workload:
    """Request i samples with seed + i, so both sides of a comparison generate the same frames."""

    task: Task
    speaker: str | None
    text: str
    max_new_tokens: int
    clip: bytes | None = None

    @classmethod
    def of(cls, info: ModelInfo, text: str, max_new_tokens: int, clip: bytes | None = None) -> Workload:
        """For the serving engine's model (`Engine.info`)."""
        return cls(info.task, (info.speakers or (None,))[0], text, max_new_tokens, clip)

    def requests(self, config: EngineConfig, n: int, seed: int) -> list[SpeechRequest]:
        task = Task.of_model_type(config.tiny_task) if config.model is None else self.task
        sampling = SamplingParams(max_new_tokens=self.max_new_tokens)
        kwargs: dict[str, Any] = {}
        if task == Task.VOICE_CLONE:
            kwargs = {"ref_audio": self.clip or demo_clip(), "x_vector_only": True}
        elif task == Task.CUSTOM_VOICE:
            kwargs = {"speaker": self.speaker if task == self.task else None}
        return [SpeechRequest(self.text, task, sampling=sampling, seed=seed + i, **kwargs) for i in range(n)]

    def bodies(self, n: int, seed: int) -> list[dict[str, Any]]:
        """The same requests for an OpenAI-compatible speech server (`POST /v1/audio/speech`, streamed 16-bit PCM):
        the serving checkpoint's task, its first speaker, x-vector cloning from the clip as a data URL."""
        body: dict[str, Any] = {
            "input": self.text,
            "task_type": TASK_TYPES[self.task],
            "response_format": "pcm",
            "stream": True,
            "max_new_tokens": self.max_new_tokens,
        }
        if self.task == Task.VOICE_CLONE:
            clip = base64.b64encode(self.clip or demo_clip()).decode()
            body.update(ref_audio=f"data:audio/wav;base64,{clip}", x_vector_only_mode=True)
        elif self.task == Task.CUSTOM_VOICE and self.speaker:
            body["voice"] = self.speaker
        return [{**body, "seed": seed + i} for i in range(n)]


def demo_clip(seconds: float = 3.0, sample_rate: int = 24000) -> bytes:
    """A speech-shaped tone (gliding pitch, syllable bursts) as WAV bytes: the reference clip of Compare and
    Benchmark runs when none is uploaded, so a voice-clone workload needs no file."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    phase = 2 * np.pi * np.cumsum(140 + 40 * np.sin(2 * np.pi * 0.7 * t)) / sample_rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 8))
    wav = (0.3 * tone * np.clip(np.sin(2 * np.pi * 3.1 * t), 0, None) ** 0.5).astype(np.float32)
    out = io.BytesIO()
    sf.write(out, wav, sample_rate, format="WAV", subtype="PCM_16")
    return out.getvalue()
