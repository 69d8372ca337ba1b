"""The lab engine: the one engine besides the serving engine, for the settings a page tries (another executor, other
chunking, another tiny task, a Compare or Benchmark config), so that no page restarts the engine the HTTP API serves.

At most one lab engine exists. It is built on demand in a worker thread (start-up takes seconds and must not stall
the server's event loop), kept while pages ask for its config (a repeated click finds it warm), and closed when a page
asks for another config while no run is using it, or when the app shuts down. A page that asks for another config
while a run is using the lab engine is refused, rather than made to wait or allowed to cut that run.

Before a build, the memory check: a lab engine is taken to need `LabLimits.weights_factor` times the serving
checkpoint's weights (weights, caches, worker processes), and `reserve_bytes` more stay free for the serving engine.
When the device has less free memory (available RAM on CPU, free GPU memory on CUDA), the page is refused with the
numbers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from engine import Engine, EngineConfig
from ui.describe import describe

log = logging.getLogger("voxtrace.lab")


@dataclass(frozen=True)
class LabLimits:
    """The memory check before a lab engine is built."""

    weights_factor: float = 2.0  # a lab engine's memory, in multiples of the checkpoint's weights
    reserve_bytes: int = 2**30  # kept free for the serving engine (its caches grow with traffic)

    def __post_init__(self) -> None:
        if self.weights_factor <= 0:
            raise ValueError(f"weights_factor must be > 0, got {self.weights_factor}")
        if self.reserve_bytes < 0:
            raise ValueError(f"reserve_bytes must be >= 0, got {self.reserve_bytes}")


class LabUnavailable(RuntimeError):
    """No lab engine for this config now (busy, not enough memory, failed to start); the message is for the page."""


def checkpoint_bytes(checkpoint: str) -> int:
    """The size of a checkpoint's weight files (the talker's and the codec's, `*.safetensors` under its folder): a
    local folder, or a Hub id's folder in the local Hub cache, where the serving engine has just put it."""
    root = Path(checkpoint)
    if not root.is_dir():
        from huggingface_hub import snapshot_download

        root = Path(snapshot_download(checkpoint, local_files_only=True))
    return sum(p.stat().st_size for p in root.rglob("*.safetensors"))


def free_memory(device: str) -> int:
    """Bytes a new engine on `device` can still take: available RAM on CPU, free memory on a CUDA device."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0]
    return psutil.virtual_memory().available


class LabEngine:
    def __init__(
        self,
        weights_bytes: int,
        limits: LabLimits | None = None,
        build: Callable[[EngineConfig], Engine] = Engine,
        free: Callable[[str], int] = free_memory,
    ) -> None:
        self.weights_bytes = weights_bytes
        self.limits = limits or LabLimits()
        self._build, self._free = build, free
        self._engine: Engine | None = None
        self._config: EngineConfig | None = None
        self._users = 0  # runs holding the lab engine now (changed on the event loop only)
        self._closed = False
        self._lock = threading.Lock()  # the engine and config, against close() from another thread
        self._transition = asyncio.Lock()  # one build or swap at a time

    @property
    def config(self) -> EngineConfig | None:
        """The config of the lab engine that is up, if any."""
        with self._lock:
            return self._config

    def engine_if_up(self, config: EngineConfig) -> Engine | None:
        """The lab engine when it is up with `config` (for work that may be dropped when it closes)."""
        with self._lock:
            return self._engine if self._config == config else None

    @asynccontextmanager
    async def use(self, config: EngineConfig) -> AsyncIterator[Engine]:
        """The lab engine for `config`, built (or swapped for) now if needed, held until the block ends."""
        async with self._transition:
            engine = self.engine_if_up(config)
            busy = self.config
            if engine is None:
                if self._users and busy is not None:
                    raise LabUnavailable(
                        f"The lab engine is busy with another run ({describe(busy)}); try again when it ends."
                    )
                engine = await asyncio.to_thread(self._replace, config)
            self._users += 1
        try:
            yield engine
        finally:
            self._users -= 1

    def close(self) -> None:
        """Close the lab engine; no other is built after this."""
        with self._lock:
            self._closed = True
            engine, self._engine, self._config = self._engine, None, None
        if engine is not None:
            engine.close()

    def _replace(self, config: EngineConfig) -> Engine:
        """Close the idle lab engine, check memory, build one for `config` (in a worker thread)."""
        with self._lock:
            if self._closed:
                raise LabUnavailable("The app is shutting down.")
            old, self._engine, self._config = self._engine, None, None
        if old is not None:
            old.close()
        self._check_memory(config)
        try:
            engine = self._build(config)
        except Exception as exc:
            log.exception("the lab engine for %s did not start", describe(config))
            raise LabUnavailable(f"The lab engine ({describe(config)}) did not start; see the server log.") from exc
        with self._lock:
            closed = self._closed
            if not closed:
                self._engine, self._config = engine, config
        if closed:  # the app shut down while this one was starting
            engine.close()
            raise LabUnavailable("The app is shutting down.")
        return engine

    def _check_memory(self, config: EngineConfig) -> None:
        need = int(self.weights_bytes * self.limits.weights_factor) + self.limits.reserve_bytes
        free = self._free(config.device)
        if need > free:
            raise LabUnavailable(
                f"Not enough free memory for a lab engine on {config.device}: it needs about {_gib(need)} "
                f"({self.limits.weights_factor:g} x the model's {_gib(self.weights_bytes)} of weights, plus "
                f"{_gib(self.limits.reserve_bytes)} kept for the serving engine) and {_gib(free)} is free. "
                "Runs with the serving engine's settings still work."
            )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
