"""GPU idle split: the GPU waiting for the host (and for launches in flight) vs the host waiting for kernels.

The known-answer cases are traces in Kineto's CUDA layout (GPU ops on pid = device with `args.correlation`, runtime
calls on the host thread), built by `CudaTrace` below; the CUDA cases capture real kernels and run where a GPU is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from profiling.figures import overhead_figure
from profiling.gpu_idle import OTHER, idle_split, main
from telemetry.capture import capture

HOST_PID = 4242


class CudaTrace:
    """A torch.profiler trace of a CUDA process, written event by event (times in µs)."""

    def __init__(self, pid: int = HOST_PID) -> None:
        self.pid = pid
        self.events: list[dict[str, Any]] = [{"ph": "M", "name": "process_name", "pid": pid, "args": {"name": "p"}}]
        self._corr = 0

    def span(self, track_name: str, start: float, end: float, tid: int = 1) -> CudaTrace:
        self.events.append({"ph": "X", "cat": "user_annotation", "name": track_name, "pid": self.pid, "tid": tid,
                            "ts": start, "dur": end - start})  # fmt: skip
        return self

    def call(self, name: str, at: float, dur: float, tid: int = 1, correlation: int | None = None) -> int:
        if correlation is None:
            self._corr += 1
            correlation = self._corr
        self.events.append({"ph": "X", "cat": "cuda_runtime", "name": name, "pid": self.pid, "tid": tid, "ts": at,
                            "dur": dur, "args": {"correlation": correlation}})  # fmt: skip
        return correlation

    def op(self, correlation: int, start: float, end: float, name: str = "kernel_fn", cat: str = "kernel") -> None:
        self.events.append({"ph": "X", "cat": cat, "name": name, "pid": 0, "tid": 7, "ts": start, "dur": end - start,
                            "args": {"correlation": correlation, "device": 0, "stream": 7}})  # fmt: skip
        self.events.append({"ph": "f", "cat": "ac2g", "name": "ac2g", "id": correlation, "pid": 0, "tid": 7,
                            "ts": start, "bp": "e"})  # fmt: skip

    def launch(self, at: float, start: float, end: float, tid: int = 1) -> None:
        self.op(self.call("cudaLaunchKernel", at, 5, tid), start, end)


def two_stage_trace() -> CudaTrace:
    """Talker (thread 1): two eager launches, a sync, then a CUDA graph of three kernels; Code2Wav (thread 2): one
    launch and a copy into pageable memory (`.cpu()`); and one kernel launched before the capture began."""
    t = CudaTrace()
    t.span("talker/decode_step", 0, 100).span("talker/predictor", 45, 58)
    t.launch(at=10, start=20, end=40)
    t.launch(at=50, start=60, end=78)  # gap 40..60: host asked at 50 -> 10 waiting for host, 10 launch latency
    t.call("cudaStreamSynchronize", at=72, dur=8)  # host blocked 8 µs
    t.span("code2wav/decode", 100, 200, tid=2)
    t.launch(at=110, start=130, end=150, tid=2)  # gap 78..130: 32 waiting, 20 latency (code2wav)
    copy = t.call("cudaMemcpyAsync", at=150, dur=15, tid=2)
    t.op(copy, 155, 160, name="Memcpy DtoH (Device -> Pageable)", cat="gpu_memcpy")  # gap 150..155: 5 latency
    t.span("talker/decode_step", 200, 300)
    graph = t.call("cudaGraphLaunch", at=205, dur=10)
    t.op(graph, 220, 230)  # gap 160..220: 45 waiting, 15 latency
    t.op(graph, 230, 240)
    t.op(graph, 241, 250)  # gap 240..241: launched long before -> 1 latency
    t.op(99, 260, 270)  # no launch call in the trace: gap 250..260 is the host's, of no stage
    return t


def test_known_split_of_a_two_stage_trace():
    split = idle_split([two_stage_trace().events])
    assert split is not None
    assert split.window_us == 250 and split.gpu_busy_us == 102
    assert split.gpu_waiting_for_host_us == 97 and split.launch_latency_us == 51
    assert split.gpu_busy_us + split.gpu_idle_us == split.window_us
    assert split.host_waiting_for_kernel_us == 23
    talker, code2wav, other = split.stages["talker"], split.stages["code2wav"], split.stages[OTHER]
    assert (talker.gpu_waiting_for_host_us, talker.launch_latency_us, talker.host_waiting_for_kernel_us) == (55, 26, 8)
    assert (code2wav.gpu_waiting_for_host_us, code2wav.launch_latency_us, code2wav.host_waiting_for_kernel_us) == (
        32,
        25,
        15,
    )
    assert other.gpu_waiting_for_host_us == 10
    # the nested predictor span is not a step of its own; the graph is one launch for three kernels
    assert (talker.steps, talker.launches, talker.graph_launches, talker.gpu_ops) == (2, 3, 1, 5)
    assert talker.launches_per_step == 1.5
    assert (code2wav.steps, code2wav.launches, code2wav.gpu_op_us) == (1, 2, 25)
    assert list(split.stages) == ["talker", "code2wav", OTHER]


def test_processes_sharing_a_gpu_are_one_device_and_their_correlation_ids_do_not_mix():
    talker, code2wav = CudaTrace(pid=1), CudaTrace(pid=2)
    talker.span("talker/decode_step", 0, 50)
    talker.launch(at=0, start=10, end=30)  # correlation 1 in this process
    code2wav.span("code2wav/decode", 0, 60)
    code2wav.launch(at=35, start=40, end=50)  # also correlation 1, in the other process
    split = idle_split([talker.events, code2wav.events])
    assert split is not None and split.devices == [0]
    assert (split.window_us, split.gpu_busy_us) == (40, 30)
    assert split.stages["code2wav"].gpu_waiting_for_host_us == 5  # gap 30..40, its own launch at 35
    assert split.stages["code2wav"].launch_latency_us == 5
    assert split.stages["talker"].gpu_waiting_for_host_us == 0  # the window opens at its first kernel


def test_ops_and_calls_without_correlation_ids_are_not_paired():
    t = CudaTrace()
    t.span("talker/decode_step", 0, 100)
    t.launch(at=0, start=10, end=20)
    t.events.append({"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": 30, "dur": 10, "args": {}})
    t.events.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaGetDevice", "pid": HOST_PID, "tid": 1, "ts": 50,
                     "dur": 1, "args": {}})  # fmt: skip
    split = idle_split([t.events])
    assert split is not None and split.stages["talker"].launches == 1  # the uncorrelated call launched nothing
    assert split.stages[OTHER].gpu_waiting_for_host_us == 10  # the gap before the unmatched kernel: nobody's launch


def test_overlapping_streams_count_busy_time_once():
    t = CudaTrace()
    t.launch(at=0, start=10, end=30)
    t.launch(at=1, start=20, end=40)  # another stream, overlapping the first
    split = idle_split([t.events])
    assert split is not None and (split.window_us, split.gpu_busy_us, split.gpu_idle_us) == (30, 30, 0)


def test_the_overhead_figure_gains_a_panel_per_stage_for_the_split():
    split = idle_split([two_stage_trace().events])
    fig = overhead_figure({}, gpu_idle=split)
    panel = {t.name: dict(zip(t.y, t.x, strict=True)) for t in fig.data if t.legendgroup == "gpu"}
    assert panel["GPU waiting for host"] == {"talker": 0.055, "code2wav": 0.032, OTHER: 0.010}
    assert panel["host waiting for kernels"]["code2wav"] == 0.015
    assert fig.layout.annotations[1].text.startswith("GPU busy 41% of 0.25 ms")
    assert len(overhead_figure({}).layout.annotations) == 1  # a CPU run: one panel


def test_a_cpu_capture_has_no_split(tmp_path: Path):
    with capture(tmp_path / "tb", "cpu", cuda=False) as cap:
        torch.randn(64, 64) @ torch.randn(64, 64)
    assert cap.result is not None
    assert idle_split([cap.result.shifted_events()]) is None


def test_the_command_reads_trace_files_and_run_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    tb = tmp_path / "run" / "tb"
    tb.mkdir(parents=True)
    (tb / "engine.1.pt.trace.json").write_text(json.dumps({"traceEvents": two_stage_trace().events}))
    assert main([str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "0.10 ms waiting for the host" in out and out.splitlines()[2].startswith("talker")
    assert main([str(tb / "engine.1.pt.trace.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stages"]["talker"]["launches_per_step"] == 1.5
    cpu_only = tmp_path / "cpu.pt.trace.json"
    cpu_only.write_text(json.dumps({"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0}]}))
    assert main([str(cpu_only)]) == 1
    assert "no GPU ops" in capsys.readouterr().err


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _steps(n_steps: int, step: Any) -> None:
    from torch.profiler import record_function

    for _ in range(n_steps):
        with record_function("talker/decode_step"):
            step()
        torch.cuda.synchronize()


@cuda
def test_a_real_cuda_capture_splits_eager_launches_and_a_graph_replay(tmp_path: Path):
    x = torch.ones(256, device="cuda")

    def eager() -> None:
        for _ in range(20):
            x.mul_(1.0001)

    eager()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        eager()  # warm-up on a side stream, as torch.cuda.graph asks
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph):
        eager()
    splits = {}
    for name, step in (("eager", eager), ("graph", graph.replay)):
        with capture(tmp_path / name, "cuda", cuda=True) as cap:
            _steps(10, step)
        splits[name] = idle_split([cap.result.shifted_events()])
    eager_split, graph_split = splits["eager"], splits["graph"]
    assert eager_split is not None and graph_split is not None
    assert eager_split.stages["talker"].launches == 200 and eager_split.stages["talker"].steps == 10
    assert graph_split.stages["talker"].graph_launches == 10 and graph_split.stages["talker"].gpu_ops >= 200
    for split in splits.values():
        assert split.host_waiting_for_kernel_us > 0
        assert split.gpu_busy_us + split.gpu_idle_us == pytest.approx(split.window_us)
