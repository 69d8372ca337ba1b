"""A workload to tune for: how requests arrive, what they ask for, and the SLOs they must meet. One YAML file
(`configs/workloads/*.yaml`); every key is checked when it loads, and a bad one is named, as engine configs are.

    arrival: {pattern: closed, concurrency: 8}      # or {pattern: poisson, rate: 2.5} (requests per second)
    tasks: {voice_clone: 1.0}                      # the task mix, as weights
    text: {source: prompt_set, length: any}        # the shipped prompt set; or {source: words, words: [8, 40]}
    clips: {source: prompt_set}                    # or {source: synthetic, seconds: [3, 10], count: 3}
    max_new_tokens: 40                             # frames per request, or a range [20, 60]
    slo: {ttfa_p99_s: 1.0, underrun_p99_s: 0.0, rtf_p99: 1.0}
    objective: throughput                          # or ttfa (the lowest TTFA p99 at this load)
    space: {chunking.first_chunk_frames: [1, 2, 4]}  # optional: the knobs to search (default: profiling.space.KNOBS)

Request i is the same in every run (its task, text, clip, length and seed come from `seed` and i), so candidates
are compared on the same requests.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.config import ConfigError, load_yaml
from engine.request import TASKS, SpeechRequest, Task
from profiling.bench.prompt_set import CLIP_RATE, PROMPT_SET, Clip, Job, Prompt, PromptSet, voice_like_clip
from profiling.search import OBJECTIVES, Slo

SLO_KEYS = ("ttfa_p99_s", "underrun_p99_s", "rtf_p99")


def _range(value: Any, name: str, kind: type) -> tuple:
    """`[low, high]` (or one number for both) of `kind` (an int is a float too), low <= high, both > 0."""
    pair = value if isinstance(value, list | tuple) else [value, value]
    kinds = (int, float) if kind is float else (int,)
    if len(pair) != 2 or not all(isinstance(v, kinds) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ConfigError(f"{name} must be a positive {kind.__name__} or a range [low, high], got {value!r}")
    if pair[0] > pair[1]:
        raise ConfigError(f"{name}: low {pair[0]} > high {pair[1]}")
    return tuple(kind(v) for v in pair)


@dataclass(frozen=True)
class Arrival:
    pattern: str = "closed"  # closed: `concurrency` requests in flight; poisson: `rate` per second, open loop
    concurrency: int = 1
    rate: float = 0.0

    def __post_init__(self) -> None:
        if self.pattern not in ("closed", "poisson"):
            raise ConfigError(f"pattern must be closed or poisson, got {self.pattern!r}")
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ConfigError(f"concurrency must be an integer >= 1, got {self.concurrency!r}")
        if self.pattern == "poisson" and not (isinstance(self.rate, int | float) and self.rate > 0):
            raise ConfigError(f"rate must be > 0 requests per second for a poisson arrival, got {self.rate!r}")


@dataclass(frozen=True)
class Texts:
    source: str = "prompt_set"  # prompt_set: the shipped prompts, cycled; words: English words, a count per request
    length: str = "any"  # prompt_set: short, long or any
    words: Any = (8, 40)  # words: the number of words, uniform in [low, high]

    def __post_init__(self) -> None:
        if self.source not in ("prompt_set", "words"):
            raise ConfigError(f"source must be prompt_set or words, got {self.source!r}")
        if self.length not in ("short", "long", "any"):
            raise ConfigError(f"length must be short, long or any, got {self.length!r}")
        object.__setattr__(self, "words", _range(self.words, "words", int))


@dataclass(frozen=True)
class Clips:
    source: str = "prompt_set"  # prompt_set: its three 2 s clips; synthetic: `count` clips of `seconds` each
    seconds: Any = (3.0, 10.0)
    count: int = 3  # distinct voices (each one's first use encodes it; the warm-up meets every one)

    def __post_init__(self) -> None:
        if self.source not in ("prompt_set", "synthetic"):
            raise ConfigError(f"source must be prompt_set or synthetic, got {self.source!r}")
        object.__setattr__(self, "seconds", _range(self.seconds, "seconds", float))
        if not isinstance(self.count, int) or self.count < 1:
            raise ConfigError(f"count must be an integer >= 1, got {self.count!r}")


@dataclass
class Workload:
    name: str = "workload"
    arrival: Arrival = field(default_factory=Arrival)
    tasks: dict[str, float] = field(default_factory=lambda: {"voice_clone": 1.0})
    x_vector_only: bool = False
    text: Texts = field(default_factory=Texts)
    clips: Clips = field(default_factory=Clips)
    max_new_tokens: Any = 40
    slo: Slo = field(default_factory=Slo)
    objective: str = "throughput"
    seed: int = 0
    space: dict[str, list] | None = None

    def __post_init__(self) -> None:
        for key, kind in (("name", str), ("x_vector_only", bool), ("seed", int)):
            if not isinstance(getattr(self, key), kind):
                raise ConfigError(f"{key} must be of type {kind.__name__}, got {getattr(self, key)!r}")
        if not isinstance(self.tasks, dict) or not self.tasks:
            raise ConfigError(f"tasks must map tasks to weights, got {self.tasks!r}")
        for task, weight in self.tasks.items():
            if task not in TASKS:
                raise ConfigError(f"tasks.{task}: not a task; tasks are {', '.join(Task)}")
            if not isinstance(weight, int | float) or weight <= 0:
                raise ConfigError(f"tasks.{task} must be a weight > 0, got {weight!r}")
        self.max_new_tokens = _range(self.max_new_tokens, "max_new_tokens", int)
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.space is not None and not (
            isinstance(self.space, dict) and all(isinstance(v, list) and v for v in self.space.values())
        ):
            raise ConfigError("space must map knobs to non-empty lists of values")
        self._clip_dir: tempfile.TemporaryDirectory | None = None

    @classmethod
    def from_yaml(cls, path: str | Path) -> Workload:
        return load_yaml(path, "workload", lambda raw: cls.from_dict({"name": Path(path).stem, **raw}))

    @classmethod
    def from_dict(cls, raw: Any) -> Workload:
        kwargs = _checked(cls, raw, "")
        sections = {"arrival": Arrival, "text": Texts, "clips": Clips, "slo": Slo}
        for key, section in sections.items():
            if key in kwargs:
                checked = _checked(section, kwargs[key], key + ".")
                try:
                    kwargs[key] = section(**checked)
                except ConfigError as exc:
                    raise ConfigError(f"{key}.{exc}") from exc
        for key in SLO_KEYS:
            value = getattr(kwargs.get("slo", Slo()), key)
            if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"slo.{key} must be a number >= 0 (seconds, or RTF), got {value!r}")
        return cls(**kwargs)

    @property
    def tiny_task(self) -> str | None:
        """The tiny model that serves this workload's tasks, when one does (a checkpoint serves one task)."""
        tiny = {Task(t).model_type for t in self.tasks}
        return tiny.pop() if len(tiny) == 1 else None

    def default_requests(self) -> int:
        """Requests in the shortest run of a search: enough to fill the concurrency twice, or 4 s of arrivals."""
        if self.arrival.pattern == "poisson":
            return max(8, round(4 * self.arrival.rate))
        return max(8, 2 * self.arrival.concurrency)

    def jobs(self, n: int) -> list[tuple[str, Job, int]]:
        """(task, job, max_new_tokens) of requests 0..n-1."""
        prompts = PromptSet.load(PROMPT_SET)
        if self.text.length != "any":
            prompts = prompts.select(length=self.text.length)
        clips = self._synthetic_clips() if self.clips.source == "synthetic" else prompts.clips
        words = " ".join(p.text for p in prompts.prompts if p.language == "English").split()
        tasks, weights = list(self.tasks), list(self.tasks.values())
        out = []
        for i in range(n):
            rng = random.Random(self.seed * 1_000_003 + i)
            task = rng.choices(tasks, weights)[0]
            if self.text.source == "words":
                count, start = rng.randint(*self.text.words), rng.randrange(len(words))
                text = " ".join(words[(start + k) % len(words)] for k in range(count))
                prompt = Prompt(f"w{i}", text, "English", "long" if count > 30 else "short")
            else:
                prompt = prompts.prompts[i % len(prompts.prompts)]
            job = Job(prompt, clips[i % len(clips)], prompts.instructs[i % len(prompts.instructs)])
            out.append((task, job, rng.randint(*self.max_new_tokens)))
        return out

    def requests(self, n: int, speaker: str | None, prefix: str) -> list[SpeechRequest]:
        """Requests 0..n-1 for the embedded engine (request ids `prefix` + i; seed `seed` + i)."""
        return [
            job.request(
                task,
                speaker=speaker,
                max_new_tokens=frames,
                seed=self.seed + i,
                x_vector_only=self.x_vector_only,
                request_id=f"{prefix}{i}",
            )  # fmt: skip
            for i, (task, job, frames) in enumerate(self.jobs(n))
        ]

    def bodies(self, n: int, voice: str | None = None) -> list[dict[str, Any]]:
        """Requests 0..n-1 as POST /v1/audio/speech bodies (streamed PCM)."""
        return [
            job.http_body(task, voice=voice, max_new_tokens=frames, x_vector_only=self.x_vector_only)
            for task, job, frames in self.jobs(n)
        ]

    def arrivals(self, n: int) -> list[float] | None:
        """Seconds from the run's start at which requests 0..n-1 arrive (Poisson); None for a closed loop."""
        if self.arrival.pattern != "poisson":
            return None
        rng, t, out = random.Random(self.seed), 0.0, []
        for _ in range(n):
            out.append(t)
            t += rng.expovariate(self.arrival.rate)
        return out

    def _synthetic_clips(self) -> list[Clip]:
        """`count` speech-shaped clips, written once per workload (the engine and HTTP bodies both read files)."""
        import soundfile as sf

        if self._clip_dir is None:
            self._clip_dir = tempfile.TemporaryDirectory(prefix="voxtrace-workload-clips-")
        out = []
        for k in range(self.clips.count):
            rng = random.Random(self.seed * 7919 + k)
            path = Path(self._clip_dir.name) / f"clip{k}.wav"
            if not path.exists():
                wav = voice_like_clip(rng.uniform(*self.clips.seconds), CLIP_RATE, seed=k, f0=110 + 40 * k)
                sf.write(path, wav, CLIP_RATE, subtype="PCM_16")
            out.append(Clip(f"clip{k}", path, "A reference clip of the workload."))
        return out


def _checked(cls: type, raw: Any, where: str) -> dict[str, Any]:
    """`raw` as keyword arguments of `cls`, refusing a non-mapping and unknown keys by their dotted name."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where.rstrip('.') or 'the workload'} must be a mapping, got {type(raw).__name__}")
    known = [f.name for f in fields(cls) if not f.name.startswith("_")]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(where + k for k in unknown)}; known: {', '.join(known)}")
    return dict(raw)
