"""The lab engines: the engines besides the serving engine, for the settings a page tries (another executor, other
chunking, another tiny task, a Compare or Benchmark config), so that no page restarts the engine the HTTP API serves.

The lab keeps a small pool of them warm, because starting one takes seconds and a page that compares two configs
asks for both on every click. An engine is built on demand in a worker thread (start-up must not stall the server's
event loop), kept between clicks, and closed when a new one needs its place or its memory and no run is using it
(the least recently used idle one first), or when the app shuts down. An engine in use by a run is never closed: a
page that needs a new engine while every place is held by a run is refused, rather than made to wait or allowed to
cut a run.

Before a build, the memory check: a lab engine is taken to need `LabLimits.weights_factor` times the serving
checkpoint's weights (weights, caches, worker processes), and `reserve_bytes` more stay free for the serving engine.
When the device has less free memory (available RAM on CPU, free GPU memory on CUDA), idle lab engines are closed,
least recently used first, until it fits; when it still does not, the page is refused with the numbers. At most
`LabLimits.max_engines` lab engines are up at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
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
    """The bounds on lab engines: how many are kept, and the memory check before one is built."""

    weights_factor: float = 2.0  # a lab engine's memory, in multiples of the checkpoint's weights
    reserve_bytes: int = 2**30  # kept free for the serving engine (its caches grow with traffic)
    max_engines: int = 3  # lab engines up at once (Compare's two sides, and one more page)

    def __post_init__(self) -> None:
        if self.weights_factor <= 0:
            raise ValueError(f"weights_factor must be > 0, got {self.weights_factor}")
        if self.reserve_bytes < 0:
            raise ValueError(f"reserve_bytes must be >= 0, got {self.reserve_bytes}")
        if self.max_engines < 1:
            raise ValueError(f"max_engines must be >= 1, got {self.max_engines}")


class LabUnavailable(RuntimeError):
    """No lab engine for this config now (busy, not enough memory, failed to start); the message is for the page."""


@dataclass(frozen=True)
class WarmEngine:
    """A lab engine that is up, as a page lists it."""

    config: EngineConfig
    runs: int  # runs using it now


@dataclass(frozen=True)
class LabStatus:
    """What the lab holds now and its bounds, for a page to show."""

    warm: list[WarmEngine]  # most recently used first
    max_engines: int
    need_bytes: int  # what a new lab engine needs free (the memory check)
    weights_factor: float
    reserve_bytes: int

    def markdown(self) -> str:
        """One line of Markdown: the warm engines and the memory bound."""
        engines = "; ".join(f"`{describe(w.config)}`" + (" (running)" if w.runs else "") for w in self.warm)
        return (
            f"**Warm lab engines ({len(self.warm)} of at most {self.max_engines}):** {engines or 'none yet'}. "
            f"A new one needs {_gib(self.need_bytes)} free ({self.weights_factor:g} x the model's weights, plus "
            f"{_gib(self.reserve_bytes)} kept for the serving engine); when it does not fit, the least recently used "
            "idle one is closed first."
        )


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


@dataclass
class _Entry:
    """A lab engine in the pool; `runs` and `used` change under the pool's lock."""

    config: EngineConfig
    engine: Engine
    runs: int = 0
    used: float = 0.0  # time.monotonic() of the last use, for least-recently-used closing


class LabEngine:
    """The pool of lab engines (see the module doc); `use(config)` is the one way to get one."""

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
        self._entries: list[_Entry] = []
        self._closed = False
        self._lock = threading.Lock()  # the entries, against close() from another thread and builds in one
        self._transition = asyncio.Lock()  # one build at a time: each memory check sees the one before it

    @property
    def need_bytes(self) -> int:
        """The free memory a new lab engine needs."""
        return int(self.weights_bytes * self.limits.weights_factor) + self.limits.reserve_bytes

    @property
    def config(self) -> EngineConfig | None:
        """The config of the lab engine used last, if any is up."""
        with self._lock:
            return max(self._entries, key=lambda e: e.used).config if self._entries else None

    def status(self) -> LabStatus:
        with self._lock:
            warm = [WarmEngine(e.config, e.runs) for e in sorted(self._entries, key=lambda e: -e.used)]
        limits = self.limits
        return LabStatus(warm, limits.max_engines, self.need_bytes, limits.weights_factor, limits.reserve_bytes)

    def engine_if_up(self, config: EngineConfig) -> Engine | None:
        """The lab engine for `config` when it is up (for work that may be dropped when it closes)."""
        with self._lock:
            return next((e.engine for e in self._entries if e.config == config), None)

    @asynccontextmanager
    async def use(self, config: EngineConfig) -> AsyncIterator[Engine]:
        """The lab engine for `config`, built now if it is not warm, held (never closed) until the block ends."""
        entry = self._take(config)
        if entry is None:
            async with self._transition:
                entry = self._take(config) or await asyncio.to_thread(self._add, config)
        try:
            yield entry.engine
        finally:
            with self._lock:
                entry.runs -= 1
                entry.used = time.monotonic()

    def close(self) -> None:
        """Close every lab engine; no other is built after this."""
        with self._lock:
            self._closed = True
            entries, self._entries = self._entries, []
        for entry in entries:
            entry.engine.close()

    def _take(self, config: EngineConfig) -> _Entry | None:
        """The warm entry for `config`, now held by one more run."""
        with self._lock:
            entry = next((e for e in self._entries if e.config == config), None)
            if entry is not None:
                entry.runs += 1
                entry.used = time.monotonic()
            return entry

    def _add(self, config: EngineConfig) -> _Entry:
        """Make room, build an engine for `config` and add it, held by the caller's run (in a worker thread)."""
        self._make_room(config)
        try:
            engine = self._build(config)
        except Exception as exc:
            log.exception("the lab engine for %s did not start", describe(config))
            raise LabUnavailable(f"The lab engine ({describe(config)}) did not start; see the server log.") from exc
        entry = _Entry(config, engine, runs=1, used=time.monotonic())
        with self._lock:
            closed = self._closed
            if not closed:
                self._entries.append(entry)
        if closed:  # the app shut down while this one was starting
            engine.close()
            raise LabUnavailable("The app is shutting down.")
        return entry

    def _make_room(self, config: EngineConfig) -> None:
        """Close idle engines, least recently used first, until a new one fits in the pool and in memory."""
        while True:
            free = self._free(config.device)
            with self._lock:
                if self._closed:
                    raise LabUnavailable("The app is shutting down.")
                full = len(self._entries) >= self.limits.max_engines
                if not full and self.need_bytes <= free:
                    return
                idle = [e for e in self._entries if e.runs == 0]
                if not idle:
                    busy = [describe(e.config) for e in self._entries]
                    break
                victim = min(idle, key=lambda e: e.used)
                self._entries.remove(victim)
            log.info("closing the idle lab engine %s to make room", describe(victim.config))
            victim.engine.close()
            del victim  # the pool held the last reference: what it took is free once collected
            _collect_closed(config.device)
        if full:
            raise LabUnavailable(
                f"All {self.limits.max_engines} lab engines are in use by runs ({'; '.join(busy)}); "
                "try again when one ends."
            )
        raise LabUnavailable(
            f"Not enough free memory for a lab engine on {config.device}: it needs about {_gib(self.need_bytes)} "
            f"({self.limits.weights_factor:g} x the model's {_gib(self.weights_bytes)} of weights, plus "
            f"{_gib(self.limits.reserve_bytes)} kept for the serving engine) and {_gib(free)} is free"
            + (f" with {len(busy)} lab engines in use by runs" if busy else "")
            + ". Runs with the serving engine's settings still work."
        )


def _collect_closed(device: str) -> None:
    """Free what a closed engine held before the next memory check reads the free memory: its reference cycles
    collected and, on CUDA, the allocator's cached blocks given back (a uni engine's tensors live in this process)."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
