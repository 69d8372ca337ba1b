"""Plotly figures for the app and the HTML report: pure functions from a Timeline or metrics to a go.Figure.

Times on the x axis are milliseconds since the run's first event. Each request keeps one colour in every figure
(`request_colors`), batched work (a decode step of several requests) is grey and lists its requests on hover.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from profiling.gpu_idle import IdleSplit
from profiling.metrics import RequestBreakdown, RunMetrics
from telemetry.events import (
    COUNTER,
    INSTANT,
    MILESTONES,
    REQUEST,
    SPAN,
    TRACK_ORDER,
    TRANSPORT,
    UTILIZATION,
    Event,
    Timeline,
)

BATCH_COLOR = "#9aa0a6"
PALETTE = qualitative.Plotly + qualitative.D3 + qualitative.Set2
MILESTONE_SYMBOLS = dict(
    zip(MILESTONES, ["circle", "diamond", "triangle-right", "square", "star", "x", "circle-x"], strict=True)
)
DEFAULT_METRICS = (
    ("ttfa_s.p50", "TTFA p50 (s)"),
    ("rtf.p50", "RTF p50"),
    ("audio_s_per_s", "audio s per s"),
    ("underrun_s.p99", "underrun p99 (s)"),
)

IDLE_PARTS = (  # (legend, StageIdle field, colour) of the GPU idle panel
    ("GPU running its ops", "gpu_op_us", "#2ca02c"),
    ("GPU waiting for host", "gpu_waiting_for_host_us", "#d62728"),
    ("GPU waiting for launches in flight", "launch_latency_us", "#ff7f0e"),
    ("host waiting for kernels", "host_waiting_for_kernel_us", "#1f77b4"),
)


def request_colors(requests: Sequence[str]) -> dict[str, str]:
    return {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(requests)}


def _disjoint_lanes(spans: list[Event]) -> list[int]:
    """Greedy interval partitioning: nested spans (the predictor inside a decode step) get a lane of their own."""
    ends: list[int] = []
    lane = [0] * len(spans)
    for i in sorted(range(len(spans)), key=lambda i: (spans[i].start_ns, -spans[i].dur_ns)):
        s = spans[i]
        k = next((k for k, end in enumerate(ends) if end <= s.start_ns), len(ends))
        if k == len(ends):
            ends.append(0)
        ends[k] = s.end_ns
        lane[i] = k
    return lane


def timeline_figure(tl: Timeline, title: str = "Run timeline") -> go.Figure:
    """A lane per stage and process (transfers on the transport lanes, hatched), then a lane per request with its
    lifetime, milestones and chunk arrivals."""
    t0 = tl.t0_ns
    colors = request_colors(tl.requests())
    groups: dict[tuple[int, str], list[Event]] = {}
    for e in tl.events:
        if e.kind == SPAN:
            groups.setdefault((e.pid, e.track), []).append(e)
    order: list[str] = []
    bars: dict[str, dict[str, list[Any]]] = {}  # colour key -> columns
    rank = {t: i for i, t in enumerate(TRACK_ORDER)}
    for (pid, track), spans in sorted(groups.items(), key=lambda kv: (kv[0][0], rank.get(kv[0][1], 99), kv[0][1])):
        lanes = _disjoint_lanes(spans)
        base = f"{tl.processes.get(pid, pid)} · {track}"
        labels = [base] + [f"{base} · overlap {k + 1}" for k in range(1, max(lanes) + 1)]
        order += labels
        for e, k in zip(spans, lanes, strict=True):
            reqs = e.requests()
            key = reqs[0] if len(reqs) == 1 else "batch"
            col = bars.setdefault(key, {"y": [], "base": [], "x": [], "text": [], "hatch": []})
            col["y"].append(labels[k])
            col["base"].append((e.start_ns - t0) / 1e6)
            col["x"].append(e.dur_ns / 1e6)
            args = ", ".join(f"{a}={v}" for a, v in (e.args or {}).items())
            col["text"].append(
                f"{e.name} {e.dur_ns / 1e6:.3f} ms<br>{args}" + (f"<br>request {reqs[0]}" if key != "batch" else "")
            )
            col["hatch"].append("/" if track == TRANSPORT else "")
    fig = go.Figure()
    for key, col in bars.items():
        fig.add_trace(
            go.Bar(
                orientation="h",
                y=col["y"],
                base=col["base"],
                x=col["x"],
                hovertext=col["text"],
                hoverinfo="text",
                name="batched" if key == "batch" else f"request {key}",
                legendgroup=key,
                marker={"color": BATCH_COLOR if key == "batch" else colors[key], "pattern": {"shape": col["hatch"]}},
            )
        )
    for request in tl.requests():
        label = f"request {request}"
        marks = [e for e in tl.events if e.kind == INSTANT and e.track == REQUEST and e.request == request]
        if not marks:
            continue
        order.append(label)
        first, last = marks[0].start_ns, max(m.start_ns for m in marks)
        fig.add_trace(
            go.Bar(
                orientation="h",
                y=[label],
                base=[(first - t0) / 1e6],
                x=[(last - first) / 1e6],
                width=0.3,
                marker={"color": colors[request], "opacity": 0.5},
                legendgroup=request,
                showlegend=request not in bars,
                name=label,
                hoverinfo="skip",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[(m.start_ns - t0) / 1e6 for m in marks],
                y=[label] * len(marks),
                mode="markers",
                legendgroup=request,
                showlegend=False,
                hovertext=[m.name for m in marks],
                hoverinfo="text+x",
                marker={
                    "color": colors[request],
                    "size": [10 if m.name in MILESTONES else 5 for m in marks],
                    "symbol": [MILESTONE_SYMBOLS.get(m.name, "line-ns-open") for m in marks],
                    "line": {"width": 1, "color": "black"},
                },
            )
        )
    fig.update_layout(
        title=title,
        barmode="overlay",
        xaxis_title="ms since run start",
        yaxis={"categoryorder": "array", "categoryarray": order, "autorange": "reversed"},
        height=max(300, 28 * len(order) + 120),
        bargap=0.2,
    )
    fig.add_annotation(
        text="One row per process and track; 'overlap 2', ... hold spans that overlap the row above in time. "
        "A request's row: its life from admission to its last audio, with its milestones.",
        xref="paper",
        yref="paper",
        x=0,
        y=1.0,
        yanchor="bottom",
        showarrow=False,
        font={"size": 10},
    )
    return fig


def utilization_figure(tl: Timeline, title: str = "Utilization") -> go.Figure:
    """CPU % per process and GPU busy % on the left axis, GPU memory (MB) on the right."""
    t0 = tl.t0_ns
    series: dict[tuple[str, int], list[Event]] = {}
    for e in tl.events:
        if e.kind == COUNTER and e.track == UTILIZATION:
            series.setdefault((e.name, e.pid), []).append(e)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for (name, pid), evs in sorted(series.items()):
        memory = name.endswith("memory_mb")
        label = f"{name} · {tl.processes.get(pid, pid)}" if name == "cpu_percent" else name
        fig.add_trace(
            go.Scatter(
                x=[(e.start_ns - t0) / 1e6 for e in evs],
                y=[e.args["value"] for e in evs],
                mode="lines",
                name=label,
                line={"dash": "dot" if memory else "solid"},
            ),
            secondary_y=memory,
        )
    fig.update_layout(title=title, xaxis_title="ms since run start")
    fig.update_yaxes(title_text="%", secondary_y=False)
    fig.update_yaxes(title_text="GPU memory (MB)", secondary_y=True)
    return fig


def overhead_figure(
    breakdowns: Mapping[str, RequestBreakdown],
    title: str = "Where each request's time went (stages overlap: the parts can add up to more than ◆ end-to-end)",
    gpu_idle: IdleSplit | None = None,
    end_to_end_s: Mapping[str, float] | None = None,
) -> go.Figure:
    """Stacked bars per request: time in each stage, in each part of the transfers, and queued (seconds), with the
    request's end-to-end time as a marker: the stages run at once (the talker makes frames while Code2Wav decodes the
    ones before), so the bars add up to more than it. With a GPU idle split (a CUDA capture), a second panel shows per
    stage its GPU ops, the GPU's waits for the host and for launches in flight, and the host's waits for kernels
    (ms)."""
    requests = list(breakdowns)
    parts: dict[str, list[float]] = {}

    def put(part: str, i: int, value: float) -> None:
        parts.setdefault(part, [0.0] * len(requests))[i] += value

    for i, r in enumerate(requests):
        b = breakdowns[r]
        for stage, s in b.stage_s.items():
            put(stage, i, s)
        for name, s in b.transfer_s.items():
            put(f"transfer {name}", i, s)
        put("queue", i, b.queue_s)
    rows = 1 if gpu_idle is None else 2
    fig = make_subplots(rows=rows, cols=1, subplot_titles=[title] + ([gpu_idle.summary()] if gpu_idle else []))
    for part, ys in parts.items():
        fig.add_trace(go.Bar(x=requests, y=ys, name=part, legendgroup="requests"), row=1, col=1)
    if end_to_end_s:
        fig.add_trace(
            go.Scatter(
                x=requests,
                y=[end_to_end_s.get(r, float("nan")) for r in requests],
                mode="markers",
                name="◆ end-to-end",
                marker={"symbol": "diamond", "size": 12, "color": "black"},
            ),
            row=1,
            col=1,
        )
    fig.update_xaxes(title_text="request", row=1, col=1)
    fig.update_yaxes(title_text="seconds", row=1, col=1)
    if gpu_idle is not None:
        stages = list(gpu_idle.stages.values())
        for label, attr, color in IDLE_PARTS:
            fig.add_trace(
                go.Bar(
                    y=[s.stage for s in stages],
                    x=[getattr(s, attr) / 1e3 for s in stages],
                    orientation="h",
                    name=label,
                    legendgroup="gpu",
                    marker={"color": color},
                    hovertext=[f"{s.launches} launches, {s.launches_per_step:.1f} per step" for s in stages],
                ),
                row=2,
                col=1,
            )
        fig.update_xaxes(title_text="ms", row=2, col=1)
    fig.update_layout(barmode="stack", height=400 * rows)
    return fig


def _get(obj: Any, path: str) -> float:
    for attr in path.split("."):
        obj = getattr(obj, attr)
    return float(obj)


def concurrency_figure(
    results: Mapping[str, Mapping[int, RunMetrics]],
    metrics: Sequence[tuple[str, str]] = DEFAULT_METRICS,
    title: str = "Metrics vs concurrency",
) -> go.Figure:
    """One panel per metric ("ttfa_s.p50" style paths into RunMetrics), one line per config."""
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[label for _, label in metrics])
    levels = sorted({c for points in results.values() for c in points})
    for n, config in enumerate(results):
        points = sorted(results[config].items())
        for col, (path, _) in enumerate(metrics, start=1):
            fig.add_trace(
                go.Scatter(
                    x=[c for c, _ in points],
                    y=[_get(m, path) for _, m in points],
                    mode="lines+markers",
                    name=config,
                    legendgroup=config,
                    showlegend=col == 1,
                    line={"color": PALETTE[n % len(PALETTE)]},
                ),
                row=1,
                col=col,
            )
            fig.update_xaxes(  # ticks at the levels run: concurrency is a whole number
                type="log", title_text="concurrency", tickvals=levels, ticktext=[str(c) for c in levels], row=1, col=col
            )
    fig.update_layout(title=title)
    return fig
