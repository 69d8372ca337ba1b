"""torch.profiler capture on our clock: a leaf the engine may import (it drives the capture in every stage process),
while `profiling.trace` turns the captured files into one Chrome trace.

torch.profiler time: Kineto writes `ts` in µs relative to `baseTimeNanoseconds` (together: Unix wall time, from its
own TSC conversion), not CLOCK_MONOTONIC. `capture` therefore opens a few `voxtrace/clock_anchor` ranges, each between
two `now_ns()` readings; the anchor with the narrowest window maps its `ts` to the window's middle (error of a few µs;
the first range ever opened takes ~1 ms, so one anchor alone would be off by that). Without anchors we fall back to
wall-minus-monotonic measured at start (error up to the wall clock's slew).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telemetry.events import Recorder, get_recorder, now_ns

ANCHOR = "voxtrace/clock_anchor"
N_ANCHORS = 5


@dataclass
class TorchTrace:
    """A torch.profiler Chrome trace written by `capture`, with what is needed to put it on our clock."""

    worker: str
    path: str
    anchors_ns: list[tuple[int, int]]  # now_ns() before and after opening each anchor range
    wall_minus_mono_ns: int  # time.time_ns() - now_ns() at capture start (fallback)

    def shifted_events(self) -> list[dict[str, Any]]:
        """The trace's events with `ts` moved onto CLOCK_MONOTONIC µs (the timeline's time base)."""
        data = json.loads(Path(self.path).read_text())
        events = data["traceEvents"] if isinstance(data, dict) else data
        anchors = sorted(e["ts"] for e in events if e.get("name") == ANCHOR and e.get("ph") == "X")
        if len(anchors) == len(self.anchors_ns) > 0:
            ts, (a, b) = min(zip(anchors, self.anchors_ns, strict=True), key=lambda p: p[1][1] - p[1][0])
            shift_us = (a + b) / 2000 - ts
        else:
            base_ns = data.get("baseTimeNanoseconds", 0) if isinstance(data, dict) else 0
            shift_us = (base_ns - self.wall_minus_mono_ns) / 1000
        out = []
        for e in events:
            if "ts" in e and e.get("ph") != "M":
                e = {**e, "ts": e["ts"] + shift_us}
            if e.get("pid") == "Spans":  # torch's pseudo-process for the capture's own slice: one per trace
                e = {**e, "pid": f"Spans ({self.worker})"}
            out.append(e)
        return out


class TorchCapture:
    """torch.profiler in this process, started and stopped on command (a stage worker gets "start/stop profile"
    control messages), or as a block with `capture()`. Writes `<tb_run_dir>/<worker>.<ns>.pt.trace.json`: the layout
    torch-tb-profiler reads (logdir = the parent of `tb_run_dir`, one run per folder, one file per worker). While it
    runs, the recorder's spans are also `record_function` ranges named `<track>/<name>`."""

    def __init__(self, tb_run_dir: str | os.PathLike[str], worker: str, recorder: Recorder | None = None, *,
                 cuda: bool | None = None, record_shapes: bool = False, with_stack: bool = False,
                 profile_memory: bool = False):  # fmt: skip
        if "." in worker:
            raise ValueError(f"worker {worker!r}: the plugin reads the name up to the first dot")
        self.tb_run_dir, self.worker = Path(tb_run_dir), worker
        self.recorder = recorder or get_recorder()
        self.options = {"record_shapes": record_shapes, "with_stack": with_stack, "profile_memory": profile_memory}
        self.cuda = cuda
        self._prof: Any = None
        self._anchors: list[tuple[int, int]] = []
        self._wall_minus_mono = 0

    def start(self) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile, record_function

        activities = [ProfilerActivity.CPU]
        if self.cuda if self.cuda is not None else torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        self._wall_minus_mono = time.time_ns() - now_ns()
        self._prof = profile(activities=activities, **self.options)
        self._prof.start()
        self._anchors = []
        for _ in range(N_ANCHORS):
            before = now_ns()
            with record_function(ANCHOR):
                self._anchors.append((before, now_ns()))
        self.recorder.range_factory = record_function

    def stop(self) -> TorchTrace:
        self.recorder.range_factory = None
        self._prof.stop()
        self.tb_run_dir.mkdir(parents=True, exist_ok=True)
        path = self.tb_run_dir / f"{self.worker}.{time.time_ns()}.pt.trace.json"
        self._prof.export_chrome_trace(str(path))
        self._prof = None
        return TorchTrace(self.worker, str(path), self._anchors, self._wall_minus_mono)


@dataclass
class Captured:
    """What `capture()` yields; `result` is set when the block ends."""

    result: TorchTrace | None = None


@contextmanager
def capture(tb_run_dir: str | os.PathLike[str], worker: str, recorder: Recorder | None = None,
            **options: Any) -> Iterator[Captured]:  # fmt: skip
    """`with capture(dir, "talker", rec) as cap: ...` then `cap.result` is the TorchTrace."""
    tc = TorchCapture(tb_run_dir, worker, recorder, **options)
    out = Captured()
    tc.start()
    try:
        yield out
    finally:
        out.result = tc.stop()
