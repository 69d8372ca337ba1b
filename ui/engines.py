"""The app's engines: the serving engines (the ones the HTTP API serves from: built at start, never switched or
closed by a page; one per task for the embedded tiny model) and the lab engines beside them for the settings a page
tries (`ui.lab`). A page asks for a config and gets whichever engine runs it."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine import Engine, EngineConfig
from engine.config import EXECUTORS
from engine.parallel import start_all
from engine.request import TASKS, ModelInfo, Task
from ui.describe import describe
from ui.lab import LabEngine, LabLimits, checkpoint_bytes

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class EngineUse:
    """The engine a run is on, and which one it is: the page says so."""

    engine: Engine
    role: Literal["serving", "lab"]
    config: EngineConfig

    @property
    def label(self) -> str:
        return f"the {self.role} engine ({describe(self.config)})"


class Engines:
    """The serving engines, built now (so start-up fails early on a bad checkpoint): one for a real checkpoint's task,
    or, for the embedded tiny model, one per task (three tiny checkpoints), so that no page's task switch restarts
    anything. Beside them the lab engines, built on demand (`ui.lab`). `close()` ends them all (the app calls it on
    shutdown)."""

    def __init__(self, config: EngineConfig, lab_limits: LabLimits | None = None) -> None:
        configs = [config]
        if config.model is None:  # the embedded tiny model: the other tasks' engines too
            others = [task for task in Task if task.model_type != config.tiny_task]
            configs += [dataclasses.replace(config, tiny_task=task.model_type) for task in others]
        builds = [functools.partial(Engine, c) for c in configs]
        engines = start_all(builds, undo=Engine.close, side_by_side=config.device == "cpu")  # engine.parallel: why
        self.serving = engines[0]
        self._by_task: dict[Task, Engine] = {engine.info.task: engine for engine in engines}
        try:
            self.lab = LabEngine(checkpoint_bytes(self.serving.checkpoint), lab_limits)
        except BaseException:
            for engine in self._by_task.values():
                engine.close()
            raise
        self._closing = threading.Lock()
        self._closed = False

    @property
    def config(self) -> EngineConfig:
        """The serving engine's config (for the tiny model: the one of its first task's engine)."""
        return self.serving.config

    @property
    def info(self) -> ModelInfo:
        """The serving engine's model: what the pages offer and default to."""
        return self.serving.info

    def tasks(self) -> list[Task]:
        """The tasks served: the checkpoint's own, or every task for the tiny model."""
        return list(self._by_task)

    def others(self) -> list[Engine]:
        """The serving engines beside `serving`: the other tasks' (the embedded tiny model's), none for a checkpoint."""
        return [engine for engine in self._by_task.values() if engine is not self.serving]

    def serving_for(self, task: str | Task) -> Engine:
        """The serving engine of `task` (the checkpoint's own engine for a task it does not serve: the request's
        validation refuses it by name)."""
        return self._by_task.get(Task(task), self.serving) if task in TASKS else self.serving

    def config_for_task(self, task: str, base: EngineConfig | None = None) -> EngineConfig:
        """`base` (the serving config by default), on the tiny checkpoint of `task` when it is a tiny model; a task
        that is not one leaves it as it is, for the request's validation to refuse by name."""
        config = base or self.config
        if config.model is None and task in TASKS and Task(task).model_type != config.tiny_task:
            return dataclasses.replace(config, tiny_task=Task(task).model_type)
        return config

    def _serving_with(self, config: EngineConfig) -> Engine | None:
        return next((e for e in self._by_task.values() if e.config == config), None)

    @asynccontextmanager
    async def use(self, config: EngineConfig) -> AsyncIterator[EngineUse]:
        """A serving engine for its own config, else a lab engine (`ui.lab.LabUnavailable` when there can be
        none now)."""
        serving = self._serving_with(config)
        if serving is not None:
            yield EngineUse(serving, "serving", config)
            return
        async with self.lab.use(config) as engine:
            yield EngineUse(engine, "lab", config)

    def if_up(self, config: EngineConfig) -> Engine | None:
        """The engine `use(config)` would give when it is already up, without building one."""
        return self._serving_with(config) or self.lab.engine_if_up(config)

    def summary(self) -> str:
        """The serving engines as they are now, for a page's header: model, tasks, executors, device, readiness."""
        config = self.config
        model = "the embedded tiny model (random weights)" if self.info.tiny else f"`{config.model}`"
        down = sorted({stage for e in self._by_task.values() for stage, up in e.ready().items() if not up})
        state = f"restarting: {', '.join(down)}" if down else "ready"
        return (
            f"**Serving** {model} · tasks: {', '.join(str(t) for t in self._by_task)} · talker "
            f"{config.talker.executor} · code2wav {config.code2wav.executor} · {config.device} · {state}"
        )

    def close(self) -> None:
        """Close the lab engines and the serving engines, all at once (each bounded by `Engine.close`, so closing them
        all takes as long as the slowest, within the server's grace period); again: nothing."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
        with ThreadPoolExecutor(1 + len(self._by_task), thread_name_prefix="close") as pool:
            for closing in [pool.submit(self.lab.close), *(pool.submit(e.close) for e in self._by_task.values())]:
                closing.result()


def preset_configs(base: EngineConfig, config_dir: Path = CONFIG_DIR) -> dict[str, EngineConfig]:
    """What Compare, Benchmark and Tune offer: `base` (the serving config) with each executor combination, then the
    YAML files of `configs/` that can run here (no CUDA config without a GPU)."""
    import torch

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
