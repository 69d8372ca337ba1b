"""Metrics of a run, with the reference benchmark's definitions (vllm-omni `bench serve` and `audio_continuity.py`).

Per request, from its start time and the arrival time and sample count of each audio chunk:
- ttfa: first non-empty chunk's arrival minus start (vllm-omni's TTFP);
- rtf: (last chunk's arrival minus start) / audio duration, so it includes queueing and ttfa;
- e2e: start to the end (the last chunk unless an explicit end is given);
- underrun: a player starts at the first chunk's arrival t0 and plays in real time; for chunk i > 0 the deficit is
  (t_i - t0) * rate - samples received before i; the worst deficit in seconds (0 when never starved). A deficit under
  one sample is float noise, as in the reference.
Per run: audio seconds per wall second, the share of requests with underrun <= 0.1 s, C50/C100/C200 (sglang-omni's
continuity: the share of multi-chunk requests whose worst underrun is <= 50/100/200 ms), and percentiles computed with
numpy's default linear interpolation (what the reference benchmark uses).
From a Timeline: per-request time in each stage, in transfers and in queues, and the run's IPC overhead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from telemetry.events import (
    ADMITTED,
    AUDIO_CHUNK,
    CODE2WAV,
    CODE2WAV_DECODE,
    COPY,
    DECODE_STEP,
    ENGINE,
    FINISHED,
    HANDOFF,
    INSTANT,
    PREFILL,
    PROMPT_PREP,
    QUEUE_WAIT,
    SERIALIZE,
    SPAN,
    TALKER,
    TRANSPORT,
    WAIT,
    Timeline,
)

CONTINUITY_THRESHOLD_S = 0.1
# the spans that count as a stage's work for the requests in them (nested spans such as the predictor are excluded)
STAGE_SPANS: dict[tuple[str, str], str] = {
    (ENGINE, PROMPT_PREP): "prompt",
    (TALKER, PREFILL): "talker",
    (TALKER, DECODE_STEP): "talker",
    (CODE2WAV, CODE2WAV_DECODE): "code2wav",
}
TRANSFER_SPANS = (SERIALIZE, COPY, WAIT, HANDOFF)


def ttfa(start_s: float, arrivals_s: Sequence[float], samples: Sequence[int]) -> float:
    """Time to first audio: the first chunk that carries samples."""
    first = next((t for t, n in zip(arrivals_s, samples, strict=True) if n > 0), None)
    if first is None:
        raise ValueError("no chunk carries audio: ttfa and rtf are undefined (leave the request out, as the reference)")
    return first - start_s


def rtf(start_s: float, arrivals_s: Sequence[float], samples: Sequence[int], sample_rate: int) -> float:
    return (arrivals_s[-1] - start_s) / (sum(samples) / sample_rate)


def underrun(arrivals_s: Sequence[float], samples: Sequence[int], sample_rate: int) -> tuple[float, int]:
    """(worst deficit in seconds, number of chunk arrivals at which the player was short by at least a sample)."""
    chunks = [(t, n) for t, n in zip(arrivals_s, samples, strict=True) if n > 0]
    if not chunks:
        return 0.0, 0
    t0 = chunks[0][0]
    received = 0
    worst = 0.0
    events = 0
    for i, (t, n) in enumerate(chunks):
        if i > 0:
            deficit = (t - t0) * sample_rate - received
            if deficit >= 1.0:
                worst = max(worst, deficit / sample_rate)
                events += 1
        received += n
    return worst, events


@dataclass
class RequestMetrics:
    request: str
    ttfa_s: float
    rtf: float
    e2e_s: float
    audio_s: float
    underrun_s: float
    underrun_events: int
    chunks: int  # as the engine (or the byte stream) made them, an empty last chunk included
    audio_chunks: int  # those carrying samples: a player can run dry only between two of them

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def request_metrics(
    request: str,
    start_s: float,
    arrivals_s: Sequence[float],
    samples: Sequence[int],
    sample_rate: int,
    end_s: float | None = None,
) -> RequestMetrics:
    """All per-request metrics from one request's chunk timings (times in seconds on any one clock)."""
    worst, events = underrun(arrivals_s, samples, sample_rate)
    end = arrivals_s[-1] if end_s is None else end_s
    return RequestMetrics(
        request=request,
        ttfa_s=ttfa(start_s, arrivals_s, samples),
        rtf=rtf(start_s, arrivals_s, samples, sample_rate),
        e2e_s=end - start_s,
        audio_s=sum(samples) / sample_rate,
        underrun_s=worst,
        underrun_events=events,
        chunks=len(arrivals_s),
        audio_chunks=sum(n > 0 for n in samples),
    )


@dataclass
class Percentiles:
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def percentiles(values: Sequence[float]) -> Percentiles:
    """mean, p50/p90/p95/p99 (numpy 'linear' interpolation) and max; NaN for an empty run."""
    if len(values) == 0:
        return Percentiles(*([float("nan")] * 6))
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p95, p99 = (float(x) for x in np.percentile(a, [50, 90, 95, 99], method="linear"))
    return Percentiles(float(a.mean()), p50, p90, p95, p99, float(a.max()))


@dataclass(frozen=True)
class Continuity:
    """The shares (0..1) of multi-chunk requests whose worst underrun is at most 50, 100 and 200 ms; NaN without any
    such request. A request whose audio came in one chunk cannot run dry, so it is left out, as sglang-omni does
    (an empty last chunk, sent when a request ends on a chunk boundary, does not make it multi-chunk)."""

    c50: float
    c100: float
    c200: float
    requests: int  # the multi-chunk requests counted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def continuity(worst_underruns_s: Sequence[float]) -> Continuity:
    """C50/C100/C200 of the multi-chunk requests' worst underruns (seconds, one per request)."""
    n = len(worst_underruns_s)
    shares = [sum(w <= ms / 1000 for w in worst_underruns_s) / n if n else float("nan") for ms in (50, 100, 200)]
    return Continuity(*shares, requests=n)


@dataclass
class RunMetrics:
    requests: int
    wall_s: float
    audio_s: float
    audio_s_per_s: float  # audio seconds per wall second (the reference's audio throughput)
    continuity_ok_rate: float  # share of requests with underrun <= CONTINUITY_THRESHOLD_S
    ttfa_s: Percentiles
    rtf: Percentiles
    e2e_s: Percentiles
    underrun_s: Percentiles
    continuity: Continuity

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_metrics(per_request: Sequence[RequestMetrics], wall_s: float) -> RunMetrics:
    """Run-level figures; `wall_s` is the benchmark's wall time (first request start to last request end)."""
    audio = sum(r.audio_s for r in per_request)
    n = len(per_request)
    ok = sum(r.underrun_s <= CONTINUITY_THRESHOLD_S for r in per_request)
    return RunMetrics(
        requests=n,
        wall_s=wall_s,
        audio_s=audio,
        audio_s_per_s=audio / wall_s if wall_s > 0 else float("nan"),
        continuity_ok_rate=ok / n if n else float("nan"),
        ttfa_s=percentiles([r.ttfa_s for r in per_request]),
        rtf=percentiles([r.rtf for r in per_request]),
        e2e_s=percentiles([r.e2e_s for r in per_request]),
        underrun_s=percentiles([r.underrun_s for r in per_request]),
        continuity=continuity([r.underrun_s for r in per_request if r.audio_chunks > 1]),
    )


def timeline_request_metrics(tl: Timeline, sample_rate: int) -> list[RequestMetrics]:
    """Server-side metrics from the engine's own events: start = ADMITTED, chunks = AUDIO_CHUNK instants
    (args `samples`), end = FINISHED when recorded. Requests without audio are left out, as the reference does."""
    starts: dict[str, int] = {}
    ends: dict[str, int] = {}
    chunks: dict[str, list[tuple[int, int]]] = {}
    for e in tl.events:
        if e.kind != INSTANT or e.request is None:
            continue
        if e.name == ADMITTED:
            starts.setdefault(e.request, e.start_ns)
        elif e.name == FINISHED:
            ends[e.request] = e.start_ns
        elif e.name == AUDIO_CHUNK:
            chunks.setdefault(e.request, []).append((e.start_ns, int(e.args["samples"]) if e.args else 0))
    out = []
    for request, cs in chunks.items():
        if request not in starts or not any(n > 0 for _, n in cs):
            continue
        end = ends.get(request)
        out.append(
            request_metrics(
                request,
                starts[request] / 1e9,
                [t / 1e9 for t, _ in cs],
                [n for _, n in cs],
                sample_rate,
                None if end is None else end / 1e9,
            )
        )
    return out


@dataclass
class RequestBreakdown:
    """Where one request's time went. Batched spans count fully for every request in the batch: each of them
    waited that long, so stage times of different requests overlap and do not add up to the run's time."""

    request: str
    stage_s: dict[str, float] = field(default_factory=dict)  # "prompt", "talker", "code2wav"
    transfer_s: dict[str, float] = field(default_factory=dict)  # serialize, copy, wait, handoff
    queue_s: float = 0.0
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def request_breakdowns(tl: Timeline) -> dict[str, RequestBreakdown]:
    out: dict[str, RequestBreakdown] = {}
    for e in tl.events:
        if e.kind != SPAN:
            continue
        stage = STAGE_SPANS.get((e.track, e.name))
        for r in e.requests():
            b = out.get(r) or out.setdefault(r, RequestBreakdown(r))
            dur = e.dur_ns / 1e9
            if stage is not None:
                b.stage_s[stage] = b.stage_s.get(stage, 0.0) + dur
            elif e.track == TRANSPORT and e.name in TRANSFER_SPANS:
                b.transfer_s[e.name] = b.transfer_s.get(e.name, 0.0) + dur
                if e.name == HANDOFF and e.args:  # one handoff per transfer carries its size
                    b.bytes += int(e.args.get("bytes", 0))
            elif e.name == QUEUE_WAIT:
                b.queue_s += dur
    return out


@dataclass
class IpcOverhead:
    """What moving data between stages cost in one run (transport spans of every process). Every transfer, in
    process or between processes, records one HANDOFF span (args `bytes`); serialize/copy/wait are its costs."""

    bytes: int
    transfers: int
    serialize_s: float
    copy_s: float
    wait_s: float
    handoff_s: Percentiles  # latency from the sender's timestamp to the receiver's pickup

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ipc_overhead(tl: Timeline) -> IpcOverhead:
    totals = {SERIALIZE: 0.0, COPY: 0.0, WAIT: 0.0}
    handoffs: list[float] = []
    moved = 0
    for e in tl.events:
        if e.kind != SPAN or e.track != TRANSPORT:
            continue
        if e.name in totals:
            totals[e.name] += e.dur_ns / 1e9
        elif e.name == HANDOFF:
            handoffs.append(e.dur_ns / 1e9)
            moved += int(e.args.get("bytes", 0)) if e.args else 0
    return IpcOverhead(moved, len(handoffs), totals[SERIALIZE], totals[COPY], totals[WAIT], percentiles(handoffs))
