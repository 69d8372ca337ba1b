"""The benchmark's prompt set: texts (several languages, short and long) and reference clips, shipped in
`profiling/bench/prompt_set_data/`. (The talker's prompt, the embeddings a request starts from, is
`engine.model.prompt`.) The clips are made here, not recorded: `python -m profiling.bench.prompt_set --make-clips`
writes them from `prompts.json` (a harmonic tone with a gliding pitch and syllable-like bursts, as the tests' clips),
so they are free to ship. They time voice cloning as real speech would; they do not say their `ref_text`.

`PromptSet.jobs(n)` cycles through prompts (and clips) so every concurrency level of a sweep sees the same mix;
`Job.request(...)` makes the engine's `SpeechRequest`, `Job.http_body(...)` the OpenAI-style JSON body.
"""

from __future__ import annotations

import argparse
import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.model.sampling import SamplingParams
from engine.request import SpeechRequest, Task

PROMPT_SET = Path(__file__).parent / "prompt_set_data" / "prompts.json"
CLIP_RATE = 24000
# a task -> the `task_type` of vllm-omni's /v1/audio/speech: its checkpoint type as the released models spell it
TASK_TYPES = {task: task.model_type.title().replace("_", "") for task in Task}


def voice_like_clip(seconds: float, sample_rate: int = CLIP_RATE, seed: int = 0, f0: float = 140.0) -> np.ndarray:
    """A harmonic tone with a gliding pitch and syllable-like bursts: speech-shaped, not silent, not noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = f0 + 0.3 * f0 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 3.1 * t), 0, None) ** 0.5
    return (0.3 * tone * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    language: str
    length: str  # "short" or "long"


@dataclass(frozen=True)
class Clip:
    id: str
    path: Path
    text: str  # the transcript sent as ref_text

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()

    def data_url(self) -> str:
        """The clip as vllm-omni's `ref_audio` takes it inline: a base64 data URL."""
        return "data:audio/wav;base64," + base64.b64encode(self.read_bytes()).decode()


@dataclass(frozen=True)
class Job:
    """One request of a sweep: a prompt, and the clip (voice_clone) or instruct (voice_design) that goes with it."""

    prompt: Prompt
    clip: Clip | None = None
    instruct: str | None = None

    def request(
        self,
        task: str,
        *,
        speaker: str | None = None,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        greedy: bool = False,
        x_vector_only: bool = False,
        request_id: str | None = None,
    ) -> SpeechRequest:
        fields: dict[str, Any] = {"text": self.prompt.text, "task": task, "language": self.prompt.language}
        if task == "voice_clone" and self.clip is not None:
            fields.update(ref_audio=self.clip.read_bytes(), ref_text=self.clip.text, x_vector_only=x_vector_only)
        elif task == "custom_voice":
            fields.update(speaker=speaker)
        elif task == "voice_design":
            fields.update(instruct=self.instruct)
        if greedy:
            fields["sampling"] = SamplingParams(do_sample=False, subtalker_dosample=False)
        if request_id is not None:
            fields["request_id"] = request_id
        return SpeechRequest(**fields, max_new_tokens=max_new_tokens, seed=seed)

    def http_body(
        self,
        task: str,
        *,
        voice: str | None = None,
        max_new_tokens: int | None = None,
        x_vector_only: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """POST /v1/audio/speech, streamed raw PCM (16-bit, mono, the model's rate)."""
        body: dict[str, Any] = {
            "input": self.prompt.text,
            "task_type": TASK_TYPES[task],
            "language": self.prompt.language,
            "response_format": "pcm",
            "stream": True,
        }
        if task == "voice_clone" and self.clip is not None:
            body.update(ref_audio=self.clip.data_url(), ref_text=self.clip.text)
            if x_vector_only:
                body["x_vector_only_mode"] = True
        elif task == "custom_voice" and voice:
            body["voice"] = voice
        elif task == "voice_design":
            body["instructions"] = self.instruct
        if max_new_tokens is not None:
            body["max_new_tokens"] = max_new_tokens
        return {**body, **(extra or {})}


@dataclass
class PromptSet:
    prompts: list[Prompt]
    clips: list[Clip]
    instructs: list[str]

    @classmethod
    def load(cls, path: str | Path = PROMPT_SET) -> PromptSet:
        path = Path(path)
        d = json.loads(path.read_text())
        prompts = [Prompt(p["id"], p["text"], p["language"], p.get("length", "short")) for p in d["prompts"]]
        clips = [Clip(c["id"], path.parent / c["file"], c["text"]) for c in d.get("clips", [])]
        return cls(prompts, clips, list(d.get("instructs", [])))

    def select(self, ids: list[str] | None = None, length: str | None = None) -> PromptSet:
        """A subset: by prompt id, or only the short/long ones."""
        keep = [p for p in self.prompts if (ids is None or p.id in ids) and (length is None or p.length == length)]
        if not keep:
            raise ValueError(f"no prompt matches ids={ids} length={length}")
        return PromptSet(keep, self.clips, self.instructs)

    def jobs(self, n: int, offset: int = 0) -> list[Job]:
        """`n` jobs cycling through the prompts, the clips and the instructs (independently)."""
        out = []
        for i in range(offset, offset + n):
            clip = self.clips[i % len(self.clips)] if self.clips else None
            instruct = self.instructs[i % len(self.instructs)] if self.instructs else None
            out.append(Job(self.prompts[i % len(self.prompts)], clip, instruct))
        return out


def make_clips(path: str | Path = PROMPT_SET) -> list[Path]:
    """(Re)write the clips listed in the prompt set: 16-bit PCM WAV, mono, 24 kHz."""
    import soundfile as sf

    path = Path(path)
    written = []
    for c in json.loads(path.read_text())["clips"]:
        out = path.parent / c["file"]
        out.parent.mkdir(parents=True, exist_ok=True)
        sf.write(out, voice_like_clip(c["seconds"], CLIP_RATE, c["seed"], c["f0"]), CLIP_RATE, subtype="PCM_16")
        written.append(out)
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--make-clips", action="store_true", help="write the prompt set's reference clips")
    args = parser.parse_args()
    if args.make_clips:
        for p in make_clips():
            print(f"{p} ({p.stat().st_size} bytes)")
    else:
        for p in PromptSet.load().prompts:
            print(f"{p.id:10} {p.language:9} {p.text[:70]}")
