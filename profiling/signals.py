"""What the profiler saw in one run, as a few numbers that explain a knob's effect: how busy each stage was, how
full its batches were, how long requests queued for it, what moving data cost. Tune keeps them per candidate
(`Measurement.signals`) and quotes them as evidence (`profiling.evidence`).

Busy shares are the stage's own spans (talker prefill and decode steps, Code2Wav decodes) over the run's wall time:
in `uni` both stages share the engine's process, so one stage's share is time the other could not have.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from profiling.metrics import RunMetrics
from profiling.run import RunResult
from telemetry import events as ev


def run_signals(result: RunResult, metrics: RunMetrics | None = None) -> dict[str, float]:
    """`metrics`: the run's metrics when not the client-side ones (an open-loop run times requests from arrival)."""
    metrics = metrics or result.metrics
    tl, wall_ms = result.timeline, max(result.wall_s, 1e-9) * 1e3
    requests = max(1, len(result.per_request))
    busy: dict[str, float] = defaultdict(float)  # ms
    batches: dict[str, list[int]] = defaultdict(list)
    decoded = 0  # request-chunks decoded by Code2Wav
    code2wav_queue: dict[str, float] = defaultdict(float)
    milestones: dict[tuple[str, str], int] = {}
    in_flight: list[tuple[int, int]] = []  # (time, rows in the talker's slots), per talker step
    for e in tl.events:
        if e.kind == ev.SPAN and e.track == ev.TALKER and e.name in (ev.PREFILL, ev.DECODE_STEP):
            busy["talker"] += e.dur_ns / 1e6
            if e.name == ev.DECODE_STEP:
                batches["talker"].append(int((e.args or {}).get("batch_size", 1)))
        elif e.kind == ev.SPAN and e.track == ev.CODE2WAV and e.name == ev.CODE2WAV_DECODE:
            busy["code2wav"] += e.dur_ns / 1e6
            batches["code2wav"].append(int((e.args or {}).get("batch_size", 1)))
            decoded += len(e.requests())
        elif e.kind == ev.SPAN and e.track == ev.CODE2WAV and e.name == ev.QUEUE_WAIT and e.request:
            code2wav_queue[e.request] += e.dur_ns / 1e6
        elif e.kind == ev.INSTANT and e.name in (ev.PROMPT_READY, ev.PREFILL_START) and e.request:
            milestones.setdefault((e.request, e.name), e.start_ns)
        elif e.kind == ev.COUNTER and e.track == ev.TALKER and e.name == ev.IN_FLIGHT and e.args:
            in_flight.append((e.start_ns, int(e.args["value"])))
    talker_queue = [
        (milestones[(r, ev.PREFILL_START)] - ready) / 1e6
        for (r, name), ready in milestones.items()
        if name == ev.PROMPT_READY and (r, ev.PREFILL_START) in milestones
    ]
    ipc = result.ipc
    return {
        "talker_busy_pct": 100 * busy["talker"] / wall_ms,
        "code2wav_busy_pct": 100 * busy["code2wav"] / wall_ms,
        "talker_batch_mean": _mean(batches["talker"]),
        "code2wav_batch_mean": _mean(batches["code2wav"]),
        "code2wav_decodes_per_request": decoded / requests,
        "talker_queue_p99_ms": _p99(talker_queue),
        "code2wav_queue_p99_ms": _p99(list(code2wav_queue.values())),
        "talker_paused_pct": _paused_pct(batches["talker"], in_flight),
        "transfer_ms_per_request": 1e3 * (ipc.serialize_s + ipc.copy_s + ipc.wait_s) / requests,
        "handoff_p50_ms": 1e3 * ipc.handoff_s.p50,
        "cpu_percent": result.cpu_percent,
        "ttfa_p99_ms": 1e3 * metrics.ttfa_s.p99,
        "underrun_p99_ms": 1e3 * metrics.underrun_s.p99,
    }


def _paused_pct(batch_sizes: list[int], in_flight: list[tuple[int, int]]) -> float:
    """Share of the talker's occupied slot-steps whose row sat out the step without a credit: rows in slots (the
    counter after each step) less the rows decoded. A lower bound: a row that finished in a step is no longer
    counted after it."""
    held = sum(v for _, v in in_flight)
    return max(0.0, 100 * (1 - sum(batch_sizes) / held)) if held else float("nan")


def _mean(values: list[int]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else float("nan")
