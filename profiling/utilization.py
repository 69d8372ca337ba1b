"""Utilization sampled while a run lasts, as counter events on the events' clock.

CPU % per engine process (psutil; 100 = one core busy, like `top`) always; GPU busy % and memory through NVML when
`pynvml` (the nvidia-ml-py package) imports and finds a driver. The sampler is a thread that sleeps on
`threading.Event.wait`, so stopping it is immediate and it never spins.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import Any

import psutil

from telemetry.events import COUNTER, UTILIZATION, Event, EventBatch, now_ns

CPU_PERCENT = "cpu_percent"
GPU_BUSY_PERCENT = "gpu_busy_percent"
GPU_MEMORY_MB = "gpu_memory_mb"


class _Nvml:
    """NVML handles for the visible GPUs, or None when there is no driver (a CPU machine)."""

    def __init__(self, nvml: Any, indices: list[int]):
        self.nvml = nvml
        self.handles = [(i, nvml.nvmlDeviceGetHandleByIndex(i)) for i in indices]

    @classmethod
    def open(cls, indices: Iterable[int] | None = None) -> _Nvml | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except Exception:  # no package, no library or no driver: sample the CPU only
            return None
        return cls(pynvml, list(range(count)) if indices is None else list(indices))

    def sample(self) -> list[tuple[int, float, float]]:
        """(gpu index, busy %, memory used in MB) per GPU."""
        out = []
        for i, h in self.handles:
            util = self.nvml.nvmlDeviceGetUtilizationRates(h)
            mem = self.nvml.nvmlDeviceGetMemoryInfo(h)
            out.append((i, float(util.gpu), mem.used / 2**20))
        return out

    def close(self) -> None:
        self.nvml.nvmlShutdown()


class UtilizationSampler:
    """`start()`, run the workload, `stop()` -> counter events. CPU events carry the sampled process's pid, so
    they land in that process's group in a trace; GPU events carry this process's pid and name `gpu<i>.…`."""

    def __init__(
        self,
        pids: Iterable[int] | None = None,
        interval_s: float = 0.1,
        gpu: bool = True,
        gpu_indices: Iterable[int] | None = None,
    ):
        self.pids = list(pids) if pids is not None else [os.getpid()]
        self.interval_s = interval_s
        self.gpu = gpu
        self.gpu_indices = gpu_indices
        self.events: list[Event] = []
        self.has_gpu = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> UtilizationSampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="utilization-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Event]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self.events

    def batch(self) -> EventBatch:
        """The samples in the form `merge_timelines` takes (pid -1: events only, no process of their own)."""
        return EventBatch(-1, "", list(self.events))

    def __enter__(self) -> UtilizationSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        procs: dict[int, psutil.Process] = {}
        for pid in self.pids:
            try:
                procs[pid] = psutil.Process(pid)
                procs[pid].cpu_percent(None)  # the first call only sets the baseline
            except psutil.Error:
                pass
        nvml = _Nvml.open(self.gpu_indices) if self.gpu else None
        self.has_gpu = nvml is not None
        try:
            while not self._stop.wait(self.interval_s):
                self._sample(procs, nvml)
            if not self.events:  # a run shorter than one interval: one sample over all of it
                self._sample(procs, nvml)
        finally:
            if nvml is not None:
                nvml.close()

    def _sample(self, procs: dict[int, psutil.Process], nvml: _Nvml | None) -> None:
        """One sample of each process's CPU % since the previous one, and of each GPU."""
        t = now_ns()
        for pid, proc in list(procs.items()):
            try:
                value = proc.cpu_percent(None)
            except psutil.Error:  # the process ended (a worker restart): stop sampling it
                del procs[pid]
                continue
            self.events.append(Event(COUNTER, CPU_PERCENT, UTILIZATION, pid, t, 0, None, {"value": value}))
        if nvml is not None:
            me = os.getpid()
            for i, busy, mem in nvml.sample():
                for name, value in ((GPU_BUSY_PERCENT, busy), (GPU_MEMORY_MB, mem)):
                    args = {"value": value, "gpu": i}
                    self.events.append(Event(COUNTER, f"gpu{i}.{name}", UTILIZATION, me, t, 0, None, args))
