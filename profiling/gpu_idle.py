"""Where GPU time went idle, from torch.profiler traces of a CUDA run: the GPU waiting for the host, or the host
waiting for the GPU.

    split = idle_split([trace.shifted_events() for trace in result.torch_traces])
    split.gpu_waiting_for_host_us, split.host_waiting_for_kernel_us, split.stages["talker"].launches

Two kinds of idle, the lens that shows what CUDA graphs save:
- **GPU waiting for host.** Between the first and the last GPU op of the run, every gap in which no kernel, copy or
  memset runs on the device is charged to the op that ends it: from the gap's start until its launch call began the
  host had not yet asked for it (Python, sampling, scheduling: *waiting for host*); from then on the launch itself was
  in flight (*launch latency*). Many small eager launches make both large; a CUDA graph replays a whole step from one
  launch, so both shrink.
- **Host waiting for kernel.** Time host threads spend blocked in a CUDA synchronisation (stream, event, device) or in
  a copy that blocks the host (`cudaMemcpy`, `cudaMemcpyAsync` into pageable memory, as `.item()` and `.cpu()` do).

Each launch and sync is charged to the stage whose span encloses it on its host thread (the recorder opens every span
as a `record_function` range named `<track>/<name>` while a capture runs); work outside any span goes to "other".

Kineto's Chrome-trace layout (torch 2.x): GPU ops have `cat` "kernel", "gpu_memcpy" or "gpu_memset" with `pid` =
device and `args.correlation` = the id of the runtime call that launched them; runtime and driver calls have `cat`
"cuda_runtime" / "cuda_driver" on the host's (pid, tid). One `cudaGraphLaunch` correlates with every kernel of its
graph. Older traces spell the categories "Kernel", "Runtime", "Memcpy", "Memset"; both are read.
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from telemetry.events import TRACK_ORDER

GPU_OP_CATS = frozenset({"kernel", "gpu_memcpy", "gpu_memset", "memcpy", "memset"})
HOST_CALL_CATS = frozenset({"cuda_runtime", "cuda_driver", "runtime"})
RANGE_CAT = "user_annotation"
OTHER = "other"
BLOCKING_COPIES = frozenset({"cudaMemcpy", "cudaMemcpy2D", "cudaMemcpyToSymbol", "cudaMemcpyFromSymbol"})

Events = Sequence[dict[str, Any]]


@dataclass
class StageIdle:
    """One stage's share: the GPU ops it launched, the idle gaps they ended, its host threads' blocking waits."""

    stage: str
    steps: int = 0  # the stage's outermost spans in the capture (prefill and decode steps, decode chunks)
    launches: int = 0  # runtime calls that put work on the GPU (kernel, graph, copy, memset)
    graph_launches: int = 0
    gpu_ops: int = 0
    gpu_op_us: float = 0.0  # summed duration of its GPU ops
    gpu_waiting_for_host_us: float = 0.0
    launch_latency_us: float = 0.0
    host_waiting_for_kernel_us: float = 0.0

    @property
    def launches_per_step(self) -> float:
        return self.launches / self.steps if self.steps else float("nan")


@dataclass
class IdleSplit:
    """A run's GPU time split into busy, waiting for host (and launch latency), and the host's waits for kernels.
    With several devices the GPU figures are summed device-time."""

    window_us: float  # first GPU op start to last GPU op end, per device, summed
    gpu_busy_us: float  # time at least one op ran
    gpu_waiting_for_host_us: float
    launch_latency_us: float
    host_waiting_for_kernel_us: float
    devices: list[int] = field(default_factory=list)
    stages: dict[str, StageIdle] = field(default_factory=dict)

    @property
    def gpu_idle_us(self) -> float:
        return self.gpu_waiting_for_host_us + self.launch_latency_us

    @property
    def gpu_busy_fraction(self) -> float:
        return self.gpu_busy_us / self.window_us if self.window_us > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["gpu_idle_us"] = self.gpu_idle_us
        out["gpu_busy_fraction"] = self.gpu_busy_fraction
        for name, stage in self.stages.items():
            out["stages"][name]["launches_per_step"] = stage.launches_per_step
        return out

    def summary(self) -> str:
        """One sentence: busy share, the GPU's two waits, the host's wait."""
        return (
            f"GPU busy {self.gpu_busy_fraction:.0%} of {self.window_us / 1e3:.2f} ms; idle "
            f"{self.gpu_waiting_for_host_us / 1e3:.2f} ms waiting for the host and "
            f"{self.launch_latency_us / 1e3:.2f} ms for launches in flight (CUDA graphs shrink both); "
            f"the host waited {self.host_waiting_for_kernel_us / 1e3:.2f} ms for kernels"
        )

    def table(self) -> str:
        """The summary, then one line per stage (ms)."""
        head = f"{'':<10}{'GPU ops':>10}{'wait host':>11}{'launch':>9}{'host wait':>11}{'launches':>10}{'/step':>8}"
        lines = [
            self.summary(),
            head,
        ]
        for s in self.stages.values():
            lines.append(
                f"{s.stage:<10}{s.gpu_op_us / 1e3:>10.2f}{s.gpu_waiting_for_host_us / 1e3:>11.2f}"
                f"{s.launch_latency_us / 1e3:>9.2f}{s.host_waiting_for_kernel_us / 1e3:>11.2f}{s.launches:>10}"
                f"{s.launches_per_step:>8.1f}"
            )
        return "\n".join(lines)


def _cat(e: dict[str, Any]) -> str:
    return str(e.get("cat", "")).lower()


def _is_blocking(call: dict[str, Any], ops: list[dict[str, Any]]) -> bool:
    """A call that holds the host until the GPU gets there."""
    name = str(call.get("name", ""))
    if "Synchronize" in name or name in BLOCKING_COPIES or name.startswith(("cuMemcpyDtoH", "cuMemcpyHtoD")):
        return True
    return name.startswith(("cudaMemcpyAsync", "cuMemcpyDtoHAsync")) and any("Pageable" in o["name"] for o in ops)


class _Spans:
    """Our stage spans (record_function ranges, well nested) on one host thread, flattened into the innermost stage
    from each boundary on, so `stage_at` is one bisection."""

    def __init__(self, ranges: list[tuple[float, float, str]]) -> None:
        self.steps: dict[str, int] = {}  # outermost spans per stage
        bounds: list[tuple[float, str]] = []
        stack: list[tuple[float, str]] = []  # (end, stage) of the open spans
        for start, end, stage in sorted(ranges, key=lambda r: (r[0], -r[1])):
            while stack and stack[-1][0] <= start:
                closed, _ = stack.pop()
                bounds.append((closed, stack[-1][1] if stack else OTHER))
            if not stack:
                self.steps[stage] = self.steps.get(stage, 0) + 1
            bounds.append((start, stage))
            stack.append((end, stage))
        while stack:
            closed, _ = stack.pop()
            bounds.append((closed, stack[-1][1] if stack else OTHER))
        self.times = [t for t, _ in bounds]
        self.stages = [s for _, s in bounds]

    def stage_at(self, t: float) -> str:
        i = bisect.bisect_right(self.times, t)
        return self.stages[i - 1] if i else OTHER


def _stage_of(name: str) -> str | None:
    track = name.split("/", 1)[0]
    return track if "/" in name and track in TRACK_ORDER else None


def idle_split(traces: Iterable[Events]) -> IdleSplit | None:
    """The split over one or more traces on one clock (one per process, e.g. `TorchTrace.shifted_events()`).
    None when they hold no GPU op (a CPU run)."""
    ops_by_device: dict[int, list[tuple[float, float, tuple[int, Any]]]] = {}
    ops_by_key: dict[tuple[int, Any], list[dict[str, Any]]] = {}
    calls: dict[tuple[int, Any], dict[str, Any]] = {}
    host_calls: list[tuple[int, dict[str, Any]]] = []
    ranges: dict[tuple[int, Any, Any], list[tuple[float, float, str]]] = {}
    for n, events in enumerate(traces):
        for e in events:
            if e.get("ph") != "X" or "ts" not in e:
                continue
            cat, args = _cat(e), e.get("args") or {}
            if cat in GPU_OP_CATS:
                key = (n, args.get("correlation"))
                device = int(args.get("device", e.get("pid", 0)) or 0)
                ops_by_device.setdefault(device, []).append((e["ts"], e["ts"] + e.get("dur", 0), key))
                if key[1] is not None:  # an op with no correlation id cannot be matched to its launch
                    ops_by_key.setdefault(key, []).append(e)
            elif cat in HOST_CALL_CATS:
                host_calls.append((n, e))
                if "correlation" in args:
                    calls[(n, args["correlation"])] = e
            elif cat == RANGE_CAT and (stage := _stage_of(str(e.get("name", "")))) is not None:
                ranges.setdefault((n, e.get("pid"), e.get("tid")), []).append((e["ts"], e["ts"] + e["dur"], stage))
    if not ops_by_device:
        return None
    spans = {k: _Spans(v) for k, v in ranges.items()}
    nowhere = _Spans([])

    def stage_of_call(n: int, call: dict[str, Any]) -> str:
        return spans.get((n, call.get("pid"), call.get("tid")), nowhere).stage_at(call["ts"])

    stages: dict[str, StageIdle] = {}

    def stage(name: str) -> StageIdle:
        return stages.setdefault(name, StageIdle(name))

    for sp in spans.values():
        for name, count in sp.steps.items():
            stage(name).steps += count
    for n, call in host_calls:
        correlation = (call.get("args") or {}).get("correlation")
        ops = ops_by_key.get((n, correlation), []) if correlation is not None else []
        s = stage(stage_of_call(n, call))
        if ops:
            s.launches += 1
            s.graph_launches += int("GraphLaunch" in str(call.get("name", "")))
            s.gpu_ops += len(ops)
            s.gpu_op_us += sum(o.get("dur", 0) for o in ops)
        if _is_blocking(call, ops):
            s.host_waiting_for_kernel_us += call.get("dur", 0)

    split = IdleSplit(0.0, 0.0, 0.0, 0.0, 0.0, devices=sorted(ops_by_device))
    for ops in ops_by_device.values():
        ops.sort()
        split.window_us += max(end for _, end, _ in ops) - ops[0][0]
        busy_until = ops[0][0]
        for start, end, key in ops:
            if start > busy_until:  # a gap, ended by this op
                gap = start - busy_until
                call = calls.get(key)
                issued = call["ts"] if call is not None else start
                waiting = min(max(issued - busy_until, 0.0), gap)
                s = stage(stage_of_call(key[0], call) if call is not None else OTHER)
                s.gpu_waiting_for_host_us += waiting
                s.launch_latency_us += gap - waiting
            split.gpu_busy_us += max(0.0, end - max(start, busy_until))
            busy_until = max(busy_until, end)
    for s in stages.values():
        split.gpu_waiting_for_host_us += s.gpu_waiting_for_host_us
        split.launch_latency_us += s.launch_latency_us
        split.host_waiting_for_kernel_us += s.host_waiting_for_kernel_us
    order = {t: i for i, t in enumerate(TRACK_ORDER)}
    split.stages = dict(sorted(stages.items(), key=lambda kv: order.get(kv[0], len(order))))
    return split


def load_trace(path: Path) -> list[dict[str, Any]]:
    """A torch.profiler Chrome trace with `ts` moved onto its `baseTimeNanoseconds` (µs), so that several processes'
    files share one clock."""
    data = json.loads(path.read_text())
    events = data["traceEvents"] if isinstance(data, dict) else data
    base_us = (data.get("baseTimeNanoseconds", 0) if isinstance(data, dict) else 0) / 1000
    return [{**e, "ts": e["ts"] + base_us} if "ts" in e else e for e in events]


def trace_files(paths: Sequence[str]) -> list[Path]:
    """Trace files named directly, or found in a run folder's tb/ (or any folder's *.pt.trace.json)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("tb/*.pt.trace.json")) or sorted(p.glob("*.pt.trace.json"))
            if not found:
                raise SystemExit(f"{p}: no *.pt.trace.json here or in its tb/ folder")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise SystemExit(f"{p}: no such file or folder")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m profiling.gpu_idle",
        description="Split GPU idle time into waiting-for-host and waiting-for-kernel, from torch.profiler traces.",
    )
    parser.add_argument("paths", nargs="+", help="trace files, or run folders (their tb/ traces)")
    parser.add_argument("--json", action="store_true", help="print the split as JSON")
    args = parser.parse_args(argv)
    split = idle_split(load_trace(p) for p in trace_files(args.paths))
    if split is None:
        print("no GPU ops in these traces: capture a CUDA run (the split needs kernels to measure)", file=sys.stderr)
        return 1
    print(json.dumps(split.to_dict(), indent=1) if args.json else split.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
