"""What the app holds between clicks: the current engine (switched by config, the old one closed), this session's
runs, the saved voices and the live audio streams."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from engine import Engine, EngineConfig
from engine.config import EXECUTORS
from ui.player import StreamHub
from ui.profiled import RunOutcome

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
TINY_TASK_OF = {"voice_clone": "base", "custom_voice": "custom_voice", "voice_design": "voice_design"}


@dataclass
class RunRecord:
    """A run of this session, shown in the Runs view and opened again from there."""

    id: str
    kind: str  # synthesize, compare, benchmark
    title: str
    config: str  # a short description of the engine config(s)
    created: float
    outcomes: list[RunOutcome] = field(default_factory=list)  # one per config
    files: list[str] = field(default_factory=list)  # downloads (paths)
    summary: dict[str, Any] = field(default_factory=dict)  # the row in the runs table


@dataclass
class SavedVoice:
    """A cloned voice to pick again: the clip and how it was used (the engine caches its x-vector by content)."""

    name: str
    clip: bytes
    ref_text: str | None
    x_vector_only: bool


def describe(config: EngineConfig) -> str:
    model = config.model or f"tiny-{config.tiny_task}"
    return f"{model} · talker {config.talker.executor} · code2wav {config.code2wav.executor} · {config.device}"


class EngineProxy:
    """Forwards every attribute to the manager's current engine."""

    def __init__(self, manager: EngineManager) -> None:
        self._manager = manager

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager.engine, name)


class EngineManager:
    def __init__(self, config: EngineConfig, runs_dir: Path | None = None, build: bool = True) -> None:
        self._config = config
        self._engine: Engine | None = None
        self._lock = threading.RLock()
        self._own_dir = runs_dir is None
        self.runs_dir = runs_dir or Path(tempfile.mkdtemp(prefix="voxtrace-runs-"))
        self.runs: dict[str, RunRecord] = {}
        self.voices: dict[str, SavedVoice] = {}
        self.streams = StreamHub()
        self._ids = itertools.count(1)
        if build:
            self.engine  # noqa: B018 (build now, so start-up fails early on a bad checkpoint)

    # -- the engine ---------------------------------------------------------------------------------------------

    @property
    def config(self) -> EngineConfig:
        return self._config

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = Engine(self._config)
            return self._engine

    @property
    def is_tiny(self) -> bool:
        """The embedded tiny model: random weights, so the audio is noise (the timings are real)."""
        return self._config.model is None

    @property
    def engine_proxy(self) -> EngineProxy:
        """Stands for whichever engine is current, for code that keeps an engine (the HTTP API) across switches."""
        return EngineProxy(self)

    def tasks(self) -> list[str]:
        """The tasks the app offers: the checkpoint's own, or every task for the tiny model (rebuilt per task)."""
        return list(TINY_TASK_OF) if self.is_tiny else [self.engine.model.task]

    def switch(self, config: EngineConfig) -> Engine:
        """The engine for `config`: the current one when the config is the same, else a new one (the old closed)."""
        with self._lock:
            if config == self._config and self._engine is not None:
                return self._engine
            old, self._engine = self._engine, None
            if old is not None:
                old.close()
            self._config = config
            return self.engine

    def config_for_task(self, task: str, base: EngineConfig | None = None) -> EngineConfig:
        config = base or self._config
        if config.model is None and TINY_TASK_OF.get(task, config.tiny_task) != config.tiny_task:
            return dataclasses.replace(config, tiny_task=TINY_TASK_OF[task])
        return config

    @asynccontextmanager
    async def temporary(self, config: EngineConfig) -> AsyncIterator[Engine]:
        """An engine of its own for one comparison run, closed at the end; the current engine stays as it is.
        Built and closed in a thread: start-up takes seconds and must not stall the server's event loop."""
        engine = await asyncio.to_thread(Engine, config)
        try:
            yield engine
        finally:
            await asyncio.to_thread(engine.close)

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None
        if self._own_dir:
            shutil.rmtree(self.runs_dir, ignore_errors=True)

    # -- runs and voices ----------------------------------------------------------------------------------------

    def new_run_dir(self, kind: str) -> tuple[str, Path]:
        run_id = f"{kind}-{next(self._ids):03d}"
        path = self.runs_dir / run_id
        path.mkdir(parents=True, exist_ok=True)
        return run_id, path

    def add_run(self, record: RunRecord) -> RunRecord:
        record.created = record.created or time.time()
        self.runs[record.id] = record
        return record

    def save_voice(self, voice: SavedVoice) -> None:
        self.voices[voice.name] = voice


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


def preset_configs(manager: EngineManager, config_dir: Path = CONFIG_DIR) -> dict[str, EngineConfig]:
    """What Compare and Benchmark offer: the current config with each executor combination, then the YAML files
    of `configs/` that can run here (no CUDA config without a GPU)."""
    import torch

    base = manager.config
    out = {}
    for talker, code2wav in itertools.product(EXECUTORS, EXECUTORS):
        config = dataclasses.replace(
            base,
            talker=dataclasses.replace(base.talker, executor=talker),
            code2wav=dataclasses.replace(base.code2wav, executor=code2wav),
        )
        out[f"current · {talker}-{code2wav}"] = config
    for path in sorted(config_dir.glob("*.yaml")):
        try:
            config = EngineConfig.from_yaml(path)
        except ValueError:
            continue
        if config.device == "cpu" or torch.cuda.is_available():
            out[path.name] = config
    return out
