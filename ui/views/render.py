"""What the views show of a run: metric cards and the profiler's figures, from a `ProfiledRun` (its `RunResult`)."""

from __future__ import annotations

import html

import plotly.graph_objects as go

from profiling.figures import overhead_figure, timeline_figure, utilization_figure
from profiling.metrics import RequestMetrics
from profiling.run import RunResult
from telemetry import events as ev
from telemetry.events import Timeline
from ui.heard import Heard
from ui.profiled import ProfiledRun

CARD_CSS = """
.vx-cards {display:flex; flex-wrap:wrap; gap:8px}
.vx-card {border:1px solid var(--border-color-primary); border-radius:8px; padding:8px 12px; min-width:120px}
.vx-card .vx-value {font-size:1.4em; font-weight:600}
.vx-card .vx-label {font-size:0.8em; opacity:0.75}
.vx-banner {border-left:4px solid #e8a317; padding:6px 12px; background:rgba(232,163,23,0.12)}
.vx-player {border:1px solid var(--border-color-primary); border-radius:8px; padding:8px 12px}
.vx-player[data-state=error] {border-color:#d9534f}
@media (max-width: 640px) { #vx-timeline {min-height:420px} }
"""


def cards(items: list[tuple[str, str]]) -> str:
    body = "".join(
        f'<div class="vx-card"><div class="vx-value">{html.escape(v)}</div>'
        f'<div class="vx-label">{html.escape(k)}</div></div>'
        for k, v in items
    )
    return f'<div class="vx-cards">{body}</div>'


def request_cards(m: RequestMetrics, seed: int | None, heard: Heard | None = None) -> str:
    """The cards of one request: time to first audio (the engine's, and the first sound in the browser when its
    player reported it), RTF and its inverse (both named), total time, audio length, chunks, underruns."""
    browser = []
    if heard is not None:
        browser = [
            ("first sound (in your browser, from the click)", f"{heard.first_sound_ms:.0f} ms"),
            ("underruns heard (count · worst gap)", f"{heard.underruns} · {heard.worst_gap_ms:.0f} ms"),
        ]
    return cards(
        [
            ("time to first audio (engine)", f"{m.ttfa_s * 1000:.0f} ms"),
            *browser,
            ("RTF (time / audio; lower is faster)", f"{m.rtf:.3f}"),
            ("× real-time (audio / time)", f"{1 / m.rtf:.2f}×" if m.rtf > 0 else "–"),
            ("total time", f"{m.e2e_s:.2f} s"),
            ("audio length", f"{m.audio_s:.2f} s"),
            ("chunks (as the engine made them)", str(m.chunks)),
            ("worst underrun (engine's schedule, no player lead)", f"{m.underrun_s * 1000:.0f} ms"),
            ("seed", "greedy" if seed is None else str(seed)),
        ]
    )


def figures(run: ProfiledRun) -> tuple[go.Figure, go.Figure, go.Figure]:
    """Timeline, utilization and the overhead breakdown of one run."""
    result = run.result
    timeline = timeline_figure(result.timeline, f"Timeline · {run.label}")
    if run.heard is not None and run.heard.lead:
        add_lead_trace(timeline, result.timeline, run.heard)
    timeline.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.15})  # the lanes keep the width
    return (
        timeline,
        utilization_figure(result.timeline, "CPU (and GPU) utilization"),
        overhead_figure(
            result.breakdowns,
            gpu_idle=result.gpu_idle,
            end_to_end_s={m.request: m.e2e_s for m in result.per_request},
        ),
    )


def add_lead_trace(fig: go.Figure, timeline: Timeline, heard: Heard) -> None:
    """The player's lead over its playhead at each chunk, on a second axis of the timeline. The browser's clock is put
    on the engine's by its first chunk: the arrival the player saw is taken as the engine's first audio."""
    t0 = timeline.t0_ns
    first = next((e.start_ns for e in timeline.events if e.name == ev.FIRST_AUDIO), None)
    if first is None:
        return
    start_ms = (first - t0) / 1e6
    fig.add_trace(
        go.Scatter(
            x=[start_ms + t for t, _ in heard.lead],
            y=[lead for _, lead in heard.lead],
            yaxis="y2",
            mode="lines+markers",
            name="player lead (ms of audio queued at each chunk; below 0: a gap)",
            line={"color": "#444", "dash": "dot"},
        )
    )
    fig.update_layout(yaxis2={"overlaying": "y", "side": "right", "title": "player lead (ms)", "zeroline": True})


def capture_note(result: RunResult) -> str:
    """What a torch.profiler capture found about GPU idle time, or why it has nothing to say."""
    if result.gpu_idle is None:
        return "The capture holds no GPU ops (a CPU run): the GPU idle split needs CUDA."
    return result.gpu_idle.summary() + "."
