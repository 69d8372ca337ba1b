"""Chrome-trace export (opens in Perfetto and chrome://tracing) and torch.profiler capture on our clock.

Perfetto cannot draw slices that partly overlap on one track, so every (process, track) gets its own thread track,
overlapping spans are spread over extra lanes, and each request gets a track of its own under a "requests" process
(its lifetime, the phases between milestones, the milestones and chunk arrivals). `check_trace` asserts the result.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiling.events import (
    COUNTER,
    ENGINE,
    INSTANT,
    MILESTONES,
    REQUEST,
    SPAN,
    TRACK_ORDER,
    Recorder,
    Timeline,
    get_recorder,
    now_ns,
)

REQUESTS_PID = 0x7FFF0000  # a synthetic process holding one track per request; no real pid reaches it
TID_BASE = 10_000_000  # our track tids sit above Linux's pid_max (2**22), so they never meet a real thread id
ANCHOR = "voxtrace/clock_anchor"
N_ANCHORS = 5


def _us(ns: int) -> float:
    return round(ns / 1000, 3)


def _lanes(spans: list[Any]) -> list[int]:
    """Lane per span so that each lane is well nested (a slice lies inside another or beside it, never across)."""
    order = sorted(range(len(spans)), key=lambda i: (spans[i].start_ns, -spans[i].dur_ns))
    stacks: list[list[int]] = []
    lane = [0] * len(spans)
    for i in order:
        s = spans[i]
        for k, stack in enumerate(stacks):
            while stack and stack[-1] <= s.start_ns:
                stack.pop()
            if not stack or stack[-1] >= s.end_ns:
                stack.append(s.end_ns)
                lane[i] = k
                break
        else:
            stacks.append([s.end_ns])
            lane[i] = len(stacks) - 1
    return lane


def _meta(kind: str, pid: int, name: str, tid: int | None = None, sort: int | None = None) -> list[dict[str, Any]]:
    base = {"ph": "M", "pid": pid, **({"tid": tid} if tid is not None else {})}
    out = [{**base, "name": f"{kind}_name", "args": {"name": name}}]
    if sort is not None:
        out.append({**base, "name": f"{kind}_sort_index", "args": {"sort_index": sort}})
    return out


def _args(e: Any) -> dict[str, Any]:
    args = dict(e.args) if e.args else {}
    if e.request is not None:
        args["request"] = e.request
    return args


def _slice(name: str, cat: str, pid: int, tid: int, start_ns: int, dur_ns: int, args: dict) -> dict[str, Any]:
    return {"ph": "X", "name": name, "cat": cat, "pid": pid, "tid": tid, "ts": _us(start_ns), "dur": _us(dur_ns),
            "args": args}  # fmt: skip


def _instant(name: str, cat: str, pid: int, tid: int, at_ns: int, args: dict) -> dict[str, Any]:
    return {"ph": "i", "s": "t", "name": name, "cat": cat, "pid": pid, "tid": tid, "ts": _us(at_ns), "args": args}


def _process_events(tl: Timeline) -> list[dict[str, Any]]:
    """Spans, non-request instants and counters on (pid, track[, lane]) thread tracks."""
    out: list[dict[str, Any]] = []
    groups: dict[tuple[int, str], list[Any]] = {}
    for e in tl.events:
        if e.kind == SPAN or (e.kind == INSTANT and e.track != REQUEST):
            groups.setdefault((e.pid, e.track), []).append(e)
        elif e.kind == COUNTER:
            name = e.name if e.track in (ENGINE, "") else f"{e.track}.{e.name}"
            value = {"value": e.args["value"]}  # one series per counter: other args would become series too
            out.append({"ph": "C", "name": name, "pid": e.pid, "ts": _us(e.start_ns), "args": value})
    rank = {t: i for i, t in enumerate(TRACK_ORDER)}
    for sort, pid in enumerate(sorted(tl.processes)):
        out += _meta("process", pid, tl.processes[pid], sort=sort)
    next_tid: dict[int, int] = {}
    for (pid, track), evs in sorted(groups.items(), key=lambda kv: (kv[0][0], rank.get(kv[0][1], 99), kv[0][1])):
        spans = [e for e in evs if e.kind == SPAN]
        lanes = _lanes(spans)
        tids: list[int] = []
        for lane in range(max(lanes, default=0) + 1):
            tid = TID_BASE + next_tid.setdefault(pid, 0)
            next_tid[pid] += 1
            tids.append(tid)
            out += _meta("thread", pid, track if lane == 0 else f"{track} #{lane + 1}", tid, tid - TID_BASE)
        for e, lane in zip(spans, lanes, strict=True):
            out.append(_slice(e.name, track, pid, tids[lane], e.start_ns, e.dur_ns, _args(e)))
        out += [_instant(e.name, track, pid, tids[0], e.start_ns, _args(e)) for e in evs if e.kind == INSTANT]
    return out


def _request_events(tl: Timeline) -> list[dict[str, Any]]:
    """Per request: lifetime slice, the phases between consecutive milestones, milestone and chunk instants."""
    out = _meta("process", REQUESTS_PID, "requests", sort=len(tl.processes))
    marks: dict[str, list[Any]] = {}
    for e in tl.events:
        if e.kind == INSTANT and e.track == REQUEST and e.request is not None:
            marks.setdefault(e.request, []).append(e)
    for i, (request, evs) in enumerate(marks.items()):
        tid, args = TID_BASE + i, {"request": request}
        out += _meta("thread", REQUESTS_PID, f"request {request}", tid, i)
        first_seen: dict[str, int] = {}
        for e in evs:
            if e.name in MILESTONES:
                first_seen.setdefault(e.name, e.start_ns)
        ms = sorted(first_seen.items(), key=lambda p: p[1])
        if len(ms) >= 2:
            out.append(_slice(f"request {request}", REQUEST, REQUESTS_PID, tid, ms[0][1], ms[-1][1] - ms[0][1], args))
            for (a, ta), (b, tb) in zip(ms, ms[1:], strict=False):
                if tb > ta:
                    out.append(_slice(f"{a} → {b}", REQUEST, REQUESTS_PID, tid, ta, tb - ta, args))
        out += [_instant(e.name, REQUEST, REQUESTS_PID, tid, e.start_ns, {**_args(e), "pid": e.pid}) for e in evs]
    return out


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


def chrome_trace(tl: Timeline, torch_traces: Sequence[TorchTrace] = ()) -> dict[str, Any]:
    """The run as a Trace Event Format object; ts are µs of CLOCK_MONOTONIC, so torch traces line up."""
    ours = _process_events(tl) + _request_events(tl)
    named = {e["pid"] for e in ours if e["ph"] == "M" and e["name"] == "process_name"}
    theirs: list[dict[str, Any]] = []
    for t in torch_traces:
        theirs += [
            e
            for e in t.shifted_events()
            if not (e.get("ph") == "M" and e.get("name") == "process_name" and e.get("pid") in named)
        ]
    return {
        "traceEvents": theirs + ours,
        "displayTimeUnit": "ms",
        "otherData": {"clock": "CLOCK_MONOTONIC", "dropped": {str(k): v for k, v in tl.dropped.items()}},
    }


def write_chrome_trace(path: str | os.PathLike[str], trace: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(trace, separators=(",", ":")))
    return path


_REQUIRED = {
    "X": ("name", "pid", "tid", "ts", "dur"),
    "i": ("name", "pid", "ts"),
    "C": ("name", "pid", "ts", "args"),
    "M": ("name", "pid", "args"),
}


def check_trace(trace: dict[str, Any]) -> list[str]:
    """Problems that would make Perfetto drop or misdraw events: missing fields, bad numbers, slices partly
    overlapping another on the same (pid, tid). Empty when the trace is sound."""
    problems: list[str] = []
    events = trace.get("traceEvents")
    if not isinstance(events, list):
        return ["traceEvents is not a list"]
    tracks: dict[tuple[Any, Any], list[tuple[float, float, str]]] = {}
    for n, e in enumerate(events):
        ph = e.get("ph")
        for key in _REQUIRED.get(ph, ()):
            if key not in e:
                problems.append(f"event {n} ({ph}) lacks {key}")
        if ph == "X" and all(k in e for k in _REQUIRED["X"]):
            if e["dur"] < 0 or not isinstance(e["ts"], (int, float)):
                problems.append(f"event {n} has a bad ts/dur")
            tracks.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"], e["name"]))
    eps = 1e-3  # µs: one nanosecond of rounding
    for key, slices in tracks.items():
        stack: list[tuple[float, float, str]] = []
        for s in sorted(slices, key=lambda s: (s[0], -s[1])):
            while stack and stack[-1][1] <= s[0] + eps:
                stack.pop()
            if stack and s[1] > stack[-1][1] + eps:
                problems.append(f"track {key}: {s[2]!r} at {s[0]} crosses {stack[-1][2]!r}")
            stack.append(s)
    return problems


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


def torch_trace_from_dict(d: dict[str, Any]) -> TorchTrace:
    """A worker sends `dataclasses.asdict(trace)` home with its events (JSON-safe); this rebuilds it."""
    return TorchTrace(d["worker"], d["path"], [tuple(p) for p in d["anchors_ns"]], d["wall_minus_mono_ns"])
