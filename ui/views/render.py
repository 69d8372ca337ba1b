"""What the views show of a run: metric cards and the profiler's figures, from a `ProfiledRun` (its `RunResult`)."""

from __future__ import annotations

import html

import plotly.graph_objects as go

from profiling.figures import overhead_figure, timeline_figure, utilization_figure
from profiling.metrics import RequestMetrics
from profiling.run import RunResult
from ui.profiled import ProfiledRun

CARD_CSS = """
.vx-cards {display:flex; flex-wrap:wrap; gap:8px}
.vx-card {border:1px solid var(--border-color-primary); border-radius:8px; padding:8px 12px; min-width:120px}
.vx-card .vx-value {font-size:1.4em; font-weight:600}
.vx-card .vx-label {font-size:0.8em; opacity:0.75}
.vx-banner {border-left:4px solid #e8a317; padding:6px 12px; background:rgba(232,163,23,0.12)}
"""


def cards(items: list[tuple[str, str]]) -> str:
    body = "".join(
        f'<div class="vx-card"><div class="vx-value">{html.escape(v)}</div>'
        f'<div class="vx-label">{html.escape(k)}</div></div>'
        for k, v in items
    )
    return f'<div class="vx-cards">{body}</div>'


def request_cards(m: RequestMetrics, seed: int | None) -> str:
    """The cards of one request: time to first audio, RTF and its inverse (both named), total time, audio length."""
    return cards(
        [
            ("time to first audio", f"{m.ttfa_s * 1000:.0f} ms"),
            ("RTF (time / audio; lower is faster)", f"{m.rtf:.3f}"),
            ("× real-time (audio / time)", f"{1 / m.rtf:.2f}×" if m.rtf > 0 else "–"),
            ("total time", f"{m.e2e_s:.2f} s"),
            ("audio length", f"{m.audio_s:.2f} s"),
            ("chunks", str(m.chunks)),
            ("worst underrun", f"{m.underrun_s * 1000:.0f} ms"),
            ("seed", "greedy" if seed is None else str(seed)),
        ]
    )


def figures(run: ProfiledRun) -> tuple[go.Figure, go.Figure, go.Figure]:
    """Timeline, utilization and the overhead breakdown of one run."""
    result = run.result
    return (
        timeline_figure(result.timeline, f"Timeline · {run.label}"),
        utilization_figure(result.timeline, "CPU (and GPU) utilization"),
        overhead_figure(result.breakdowns, gpu_idle=result.gpu_idle),
    )


def capture_note(result: RunResult) -> str:
    """What a torch.profiler capture found about GPU idle time, or why it has nothing to say."""
    if result.gpu_idle is None:
        return "The capture holds no GPU ops (a CPU run): the GPU idle split needs CUDA."
    return result.gpu_idle.summary() + "."
