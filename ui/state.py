"""What the app holds between clicks: the serving engine (the one the HTTP API serves from: built at start, never
switched or closed by a page), the lab engine for the settings a page tries (`ui.lab`), the saved voices
(`ui.voices`), the runs and the live audio streams."""

from __future__ import annotations

import dataclasses
import io
import itertools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf

from engine import Engine, EngineConfig
from engine.config import EXECUTORS
from ui.describe import describe
from ui.lab import LabEngine, LabLimits, checkpoint_bytes
from ui.player import StreamHub
from ui.profiled import RunOutcome
from ui.voices import VoiceLibrary, VoiceLimits

__all__ = ["EngineManager", "EngineUse", "RunRecord", "default_data_dir", "demo_clip", "describe", "preset_configs"]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
TINY_TASK_OF = {"voice_clone": "base", "custom_voice": "custom_voice", "voice_design": "voice_design"}
DATA_DIR_ENV = "VOXTRACE_DATA_DIR"


def default_data_dir() -> Path:
    """Where the app keeps what outlives it (saved voices): $VOXTRACE_DATA_DIR, else $XDG_DATA_HOME/voxtrace, else
    ~/.local/share/voxtrace."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "voxtrace"


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


@dataclass(frozen=True)
class EngineUse:
    """The engine a run is on, and which one it is: the page says so."""

    engine: Engine
    role: Literal["serving", "lab"]
    config: EngineConfig

    @property
    def label(self) -> str:
        return f"the {self.role} engine ({describe(self.config)})"


class EngineManager:
    """The app's state; `close()` ends both engines (the app calls it on shutdown)."""

    def __init__(
        self,
        config: EngineConfig,
        runs_dir: Path | None = None,
        data_dir: Path | None = None,
        voice_limits: VoiceLimits | None = None,
        lab_limits: LabLimits | None = None,
    ) -> None:
        self.voices = VoiceLibrary((data_dir or default_data_dir()) / "voices", voice_limits)
        self._own_dir = runs_dir is None
        self.runs_dir = runs_dir or Path(tempfile.mkdtemp(prefix="voxtrace-runs-"))
        self.runs: dict[str, RunRecord] = {}
        self.streams = StreamHub()
        self._ids = itertools.count(1)
        self._closing = threading.Lock()
        self._closed = False
        self.serving = Engine(config)  # built now, so start-up fails early on a bad checkpoint
        try:
            self.lab = LabEngine(checkpoint_bytes(self.serving.checkpoint), lab_limits)
        except BaseException:
            self.serving.close()
            raise

    # -- the engines --------------------------------------------------------------------------------------------

    @property
    def config(self) -> EngineConfig:
        """The serving engine's config."""
        return self.serving.config

    @property
    def is_tiny(self) -> bool:
        """The embedded tiny model: random weights, so the audio is noise (the timings are real)."""
        return self.config.model is None

    def tasks(self) -> list[str]:
        """The tasks the app offers: the checkpoint's own, or every task for the tiny model (another task: a lab
        engine on that task's tiny checkpoint)."""
        return list(TINY_TASK_OF) if self.is_tiny else [self.serving.model.task]

    def config_for_task(self, task: str, base: EngineConfig | None = None) -> EngineConfig:
        config = base or self.config
        if config.model is None and TINY_TASK_OF.get(task, config.tiny_task) != config.tiny_task:
            return dataclasses.replace(config, tiny_task=TINY_TASK_OF[task])
        return config

    @asynccontextmanager
    async def engine_for(self, config: EngineConfig) -> AsyncIterator[EngineUse]:
        """The serving engine for its own config, else the lab engine (`ui.lab.LabUnavailable` when there can be
        none now)."""
        if config == self.config:
            yield EngineUse(self.serving, "serving", config)
            return
        async with self.lab.use(config) as engine:
            yield EngineUse(engine, "lab", config)

    def engine_if_up(self, config: EngineConfig) -> Engine | None:
        """The engine `engine_for(config)` would give when it is already up, without building one."""
        return self.serving if config == self.config else self.lab.engine_if_up(config)

    def close(self) -> None:
        """Close the lab engine, then the serving engine (each bounded by `Engine.close`); again: nothing."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
        self.lab.close()
        self.serving.close()
        if self._own_dir:
            shutil.rmtree(self.runs_dir, ignore_errors=True)

    # -- runs -----------------------------------------------------------------------------------------------------

    def new_run_dir(self, kind: str) -> tuple[str, Path]:
        run_id = f"{kind}-{next(self._ids):03d}"
        path = self.runs_dir / run_id
        path.mkdir(parents=True, exist_ok=True)
        return run_id, path

    def add_run(self, record: RunRecord) -> RunRecord:
        record.created = record.created or time.time()
        self.runs[record.id] = record
        return record


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
