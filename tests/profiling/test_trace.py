"""Chrome-trace export, torch.profiler capture on our clock, and the TensorBoard plugin reading the capture."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from profiling.trace import REQUESTS_PID, check_trace, chrome_trace, write_chrome_trace
from telemetry import events as ev
from telemetry.capture import TorchTrace, capture
from telemetry.events import Recorder, Timeline, merge_timelines


def test_trace_has_the_perfetto_fields_and_no_crossing_slices(run: Timeline, tmp_path: Path):
    path = write_chrome_trace(tmp_path / "run.json", chrome_trace(run))
    trace = json.loads(path.read_text())
    assert check_trace(trace) == []
    events = trace["traceEvents"]
    assert {e["ph"] for e in events} == {"X", "i", "C", "M"}
    names = {(e["pid"], e["args"]["name"]) for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {(100, "engine"), (200, "talker-worker"), (REQUESTS_PID, "requests")}


def test_overlapping_transfers_get_a_lane_each(run: Timeline):
    trace = chrome_trace(run)["traceEvents"]
    threads = {
        e["tid"]: e["args"]["name"] for e in trace if e["ph"] == "M" and e["name"] == "thread_name" and e["pid"] == 200
    }
    transfers = [e for e in trace if e["ph"] == "X" and e["pid"] == 200 and e["cat"] == ev.TRANSPORT]
    assert sorted(threads[e["tid"]] for e in transfers) == ["transport", "transport #2"]


def test_each_request_has_its_own_track_with_its_milestones(run: Timeline):
    trace = chrome_trace(run)["traceEvents"]
    mine = [e for e in trace if e["pid"] == REQUESTS_PID and e["ph"] != "M"]
    by_tid: dict[int, set[str]] = {}
    for e in mine:
        by_tid.setdefault(e["tid"], set()).add(e["args"]["request"])
    assert sorted(by_tid.values(), key=sorted) == [{"a"}, {"b"}]
    a_marks = {e["name"] for e in mine if e["ph"] == "i" and e["args"]["request"] == "a"}
    assert set(ev.MILESTONES) <= a_marks and ev.AUDIO_CHUNK in a_marks
    assert any(e["ph"] == "X" and e["name"] == "request a" for e in mine)


def test_check_trace_catches_crossing_slices_and_missing_fields():
    bad = {
        "traceEvents": [
            {"ph": "X", "name": "a", "pid": 1, "tid": 1, "ts": 0, "dur": 10},
            {"ph": "X", "name": "b", "pid": 1, "tid": 1, "ts": 5, "dur": 10},
            {"ph": "X", "name": "inside", "pid": 1, "tid": 2, "ts": 0, "dur": 10},
            {"ph": "X", "name": "nested", "pid": 1, "tid": 2, "ts": 2, "dur": 8},
            {"ph": "i", "name": "no ts", "pid": 1},
        ]
    }
    problems = check_trace(bad)
    assert len(problems) == 2
    assert any("'b'" in p and "crosses 'a'" in p for p in problems)
    assert any("lacks ts" in p for p in problems)


def _tiny_workload(rec: Recorder) -> None:
    x = torch.randn(64, 64)
    for _ in range(3):
        with rec.span(ev.DECODE_STEP, ev.TALKER, batch_size=1):
            x = torch.tanh(x @ x)


@pytest.fixture(scope="module")
def captured(tmp_path_factory) -> tuple[Path, Timeline, object]:
    """One capture shared by the torch tests: starting the profiler costs about a second."""
    logdir = tmp_path_factory.mktemp("tb")
    rec = Recorder("talker")
    with capture(logdir / "run1", "talker", rec) as cap:
        _tiny_workload(rec)
    return logdir, merge_timelines([rec.drain_batch()]), cap.result


def test_capture_writes_the_tensorboard_layout_with_our_ranges(captured):
    logdir, _, result = captured
    (path,) = (logdir / "run1").glob("*.pt.trace.json")
    assert path.name.startswith("talker.") and str(path) == result.path
    ranges = [e for e in json.loads(path.read_text())["traceEvents"] if e.get("name") == "talker/decode_step"]
    assert len(ranges) == 3


def test_torch_ranges_line_up_with_our_spans(captured):
    """Each torch range opens just before our span's clock is read and closes just after: on one clock, it holds
    our span (however long the machine made us wait in between), give or take the clocks' alignment error."""
    _, tl, result = captured
    merged = chrome_trace(tl, [result])
    ours = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in merged["traceEvents"] if e.get("cat") == ev.TALKER and e["ph"] == "X"
    )
    theirs = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in merged["traceEvents"] if e.get("name") == "talker/decode_step"
    )
    assert len(ours) == len(theirs) == 3
    alignment_us = 100
    for (start, end), (range_start, range_end) in zip(ours, theirs, strict=True):
        assert range_start - alignment_us <= start and end <= range_end + alignment_us
    assert check_trace({"traceEvents": [e for e in merged["traceEvents"] if e.get("cat") == ev.TALKER]}) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str) -> object | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)
    except OSError:  # not listening yet
        return None


def test_tensorboard_profiler_plugin_lists_the_run(captured, tmp_path: Path):
    logdir = captured[0]
    port = _free_port()
    log_path = tmp_path / "tensorboard.log"
    cmd = [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir",
        str(logdir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    api = f"http://127.0.0.1:{port}/data/plugin/pytorch_profiler"
    with log_path.open("w") as log:
        # its own session: the plugin starts worker processes, and the whole group must go at the end
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            runs: list[str] = []
            deadline = time.monotonic() + 90
            while "run1" not in runs and time.monotonic() < deadline:
                assert proc.poll() is None, log_path.read_text()
                time.sleep(0.5)
                runs = (_get_json(f"{api}/runs") or {"runs": []})["runs"]
            assert "run1" in runs, log_path.read_text()[-2000:]
            # the plugin lists a run once it has parsed it: its views and our worker are there
            assert "Trace" in _get_json(f"{api}/views?run=run1")
            assert _get_json(f"{api}/workers?run=run1&view=Overview") == ["talker"]
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))


def test_two_workers_kernels_on_one_gpu_keep_tracks_of_their_own(run: Timeline, tmp_path: Path):
    """Kineto puts each process's GPU ops on pid = the device: the talker's and code2wav's kernels, running at once on
    GPU 0, would cross on one track. Each worker's get a process of their own, named for it."""
    traces = []
    for worker, host_pid, start in (("talker", 4101, 100.0), ("code2wav", 4102, 115.0)):
        events = [
            {"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "GPU 0"}},
            {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": host_pid, "tid": 1, "ts": 90.0,
             "dur": 5.0, "args": {"correlation": 1}},
            *({"ph": "X", "cat": "kernel", "name": f"{worker} kernel", "pid": 0, "tid": 7, "ts": ts, "dur": 30.0,
               "args": {"device": 0, "correlation": 1}} for ts in (start, start + 40)),
        ]  # fmt: skip
        path = tmp_path / f"{worker}.pt.trace.json"
        path.write_text(json.dumps({"traceEvents": events, "baseTimeNanoseconds": 0}))
        traces.append(TorchTrace(worker, str(path), [], 0))
    trace = chrome_trace(run, traces)
    assert check_trace(trace) == []  # the talker's kernel at 100-130 µs no longer crosses code2wav's at 115-145 µs
    gpu = {e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and str(e["pid"]).startswith("GPU")}
    assert gpu == {"GPU 0 (talker)", "GPU 0 (code2wav)"}
    kernels = {(e["pid"], e["name"]) for e in trace["traceEvents"] if e.get("cat") == "kernel"}
    assert kernels == {("GPU 0 (talker)", "talker kernel"), ("GPU 0 (code2wav)", "code2wav kernel")}


def test_slices_that_cross_within_one_capture_get_lanes_of_their_own(run: Timeline, tmp_path: Path):
    """Both stages in one process (uni): Kineto draws the talker's and code2wav's ranges onto the one GPU stream,
    where they cross; so do its own buffer requests. The crossing ones move to a second lane of their track."""
    events = [
        {"ph": "M", "name": "thread_name", "pid": 0, "tid": 7, "args": {"name": "stream 7"}},
        *({"ph": "X", "cat": "gpu_user_annotation", "name": name, "pid": 0, "tid": 7, "ts": ts, "dur": 50.0}
          for name, ts in (("talker/prefill", 100.0), ("code2wav/decode", 120.0))),
        {"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": 125.0, "dur": 5.0, "args": {"device": 0}},
        *({"ph": "X", "cat": "overhead", "name": "Activity Buffer Request", "pid": -1, "tid": 0, "ts": ts, "dur": 20.0}
          for ts in (10.0, 15.0)),
    ]  # fmt: skip
    path = tmp_path / "engine.pt.trace.json"
    path.write_text(json.dumps({"traceEvents": events, "baseTimeNanoseconds": 0}))
    trace = chrome_trace(run, [TorchTrace("engine", str(path), [], 0)])
    assert check_trace(trace) == []
    lanes = {e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"stream 7 #2", "0 #2"} <= lanes
    moved = {e["name"] for e in trace["traceEvents"] if e.get("ph") == "X" and e.get("tid", 0) >= 20_000_000}
    assert moved == {"code2wav/decode", "Activity Buffer Request"}  # the kernel stays inside the talker's range
