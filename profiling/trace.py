"""Chrome-trace export (opens in Perfetto and chrome://tracing).

Perfetto cannot draw slices that partly overlap on one track, so every (process, track) gets its own thread track,
overlapping spans are spread over extra lanes, and each request gets a track of its own under a "requests" process
(its lifetime, the phases between milestones, the milestones and chunk arrivals). `check_trace` asserts the result.
The torch.profiler traces themselves are captured by `telemetry.capture` and put on our clock there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from profiling.gpu_idle import GPU_OP_CATS
from telemetry.capture import TorchTrace
from telemetry.events import (
    COUNTER,
    ENGINE,
    INSTANT,
    MILESTONES,
    REQUEST,
    SPAN,
    TRACK_ORDER,
    Timeline,
)

REQUESTS_PID = 0x7FFF0000  # a synthetic process holding one track per request; no real pid reaches it
TID_BASE = 10_000_000  # our track tids sit above Linux's pid_max (2**22), so they never meet a real thread id
LANE_TID_BASE = 20_000_000  # the extra lanes of torch's tracks (`_untangled`), above ours


def _us(ns: int) -> float:
    return round(ns / 1000, 3)


def _lanes(bounds: Sequence[tuple[float, float]], eps: float = 0.0) -> list[int]:
    """Lane per (start, end) so that each lane is well nested (a slice lies inside another or beside it, never across);
    `eps` of rounding is no overlap."""
    order = sorted(range(len(bounds)), key=lambda i: (bounds[i][0], -bounds[i][1]))
    stacks: list[list[float]] = []
    lane = [0] * len(bounds)
    for i in order:
        start, end = bounds[i]
        for k, stack in enumerate(stacks):
            while stack and stack[-1] <= start + eps:
                stack.pop()
            if not stack or stack[-1] + eps >= end:
                stack.append(end)
                lane[i] = k
                break
        else:
            stacks.append([end])
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
        lanes = _lanes([(e.start_ns, e.end_ns) for e in spans])
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


def _own_gpu_tracks(events: list[dict[str, Any]], worker: str) -> list[dict[str, Any]]:
    """One process's torch trace with its GPU ops under a process of their own, "GPU 0 (talker)": Kineto puts every
    process's GPU ops on pid = the device, so two workers' kernels on one GPU would share one track and cross there
    (the stages run concurrently on one device)."""
    devices = {e.get("pid") for e in events if str(e.get("cat", "")).lower() in GPU_OP_CATS}
    rename = {device: f"GPU {device} ({worker})" for device in devices}
    out = []
    for e in events:
        if e.get("pid") in rename:
            e = {**e, "pid": rename[e["pid"]]}
            if e.get("ph") == "M" and e.get("name") == "process_name":
                e["args"] = {**e.get("args", {}), "name": e["pid"]}
        out.append(e)
    return out


def _untangled(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Torch events with the slices that cross on one (pid, tid) moved to extra lanes of that track (named "<thread>
    #2", ...). Kineto draws each record_function range onto the GPU stream too ("gpu_user_annotation"), where the
    talker's and code2wav's ranges cross when both stages run in one process; its own "Activity Buffer Request"
    slices cross as well."""
    tracks: dict[tuple[Any, Any], list[int]] = {}
    for i, e in enumerate(events):
        if e.get("ph") == "X" and all(k in e for k in ("pid", "tid", "ts", "dur")):
            tracks.setdefault((e["pid"], e["tid"]), []).append(i)
    names = {
        (e.get("pid"), e.get("tid")): e.get("args", {}).get("name") for e in events if e.get("name") == "thread_name"
    }
    out, extra, next_tid = list(events), [], LANE_TID_BASE
    for (pid, tid), members in tracks.items():
        lanes = _lanes([(events[i]["ts"], events[i]["ts"] + events[i]["dur"]) for i in members], eps=1e-3)
        lane_tids = {}
        for i, lane in zip(members, lanes, strict=True):
            if lane:
                if lane not in lane_tids:
                    lane_tids[lane], next_tid = next_tid, next_tid + 1
                    extra += _meta("thread", pid, f"{names.get((pid, tid)) or tid} #{lane + 1}", lane_tids[lane])
                out[i] = {**events[i], "tid": lane_tids[lane]}
    return out + extra


def chrome_trace(tl: Timeline, torch_traces: Sequence[TorchTrace] = ()) -> dict[str, Any]:
    """The run as a Trace Event Format object; ts are µs of CLOCK_MONOTONIC, so torch traces line up."""
    ours = _process_events(tl) + _request_events(tl)
    named = {e["pid"] for e in ours if e["ph"] == "M" and e["name"] == "process_name"}
    theirs: list[dict[str, Any]] = []
    for t in torch_traces:
        theirs += [
            e
            for e in _own_gpu_tracks(t.shifted_events(), t.worker)
            if not (e.get("ph") == "M" and e.get("name") == "process_name" and e.get("pid") in named)
        ]
    return {
        "traceEvents": _untangled(theirs) + ours,
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
