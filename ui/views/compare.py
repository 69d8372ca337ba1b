"""Compare: the same requests under two configs (say uni against mp), one after the other, each on the lab engine
(`ui.lab`: the serving engine is not touched); both timelines on one time axis, the metrics side by side with the
difference, and a one-line verdict."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine import EngineError, RequestError
from profiling.figures import timeline_figure
from ui.describe import describe
from ui.engines import preset_configs
from ui.lab import LabUnavailable
from ui.profiled import ProfiledRun, run_requests
from ui.run_store import RunRecord
from ui.state import AppState
from ui.uploads import Uploads
from ui.views.form import form_inputs
from ui.views.workload import Workload

# (label, getter of a RunResult, lower is better)
ROWS: list[tuple[str, Any, bool]] = [
    ("wall time (s)", lambda r: r.metrics.wall_s, True),
    ("time to first audio p50 (s)", lambda r: r.metrics.ttfa_s.p50, True),
    ("RTF p50 (lower is faster)", lambda r: r.metrics.rtf.p50, True),
    ("× real-time p50 (1 / RTF)", lambda r: 1 / r.metrics.rtf.p50 if r.metrics.rtf.p50 > 0 else float("nan"), False),
    ("end-to-end p50 (s)", lambda r: r.metrics.e2e_s.p50, True),
    ("audio s per wall s", lambda r: r.metrics.audio_s_per_s, False),
    ("underrun p99 (s)", lambda r: r.metrics.underrun_s.p99, True),
    ("CPU % (engine processes, 100 = a core)", lambda r: r.cpu_percent, True),
    ("GPU busy % (NVML)", lambda r: r.gpu_busy_mean_percent, False),
]


@dataclass
class CompareForm:
    """The Compare page's inputs, in the order its components are sent."""

    config_a: str
    config_b: str
    text: str
    requests: float
    concurrency: float
    max_new_tokens: float
    seed: float
    clip: str | None  # an upload's server path (`ui.uploads`); None: a test tone


def shared_timeline(a: ProfiledRun, b: ProfiledRun) -> go.Figure:
    """Both runs' timelines stacked, each from its own start, on one shared x axis (ms since the run began)."""
    parts = [timeline_figure(run.result.timeline, run.label) for run in (a, b)]
    heights = [max(len(p.layout.yaxis.categoryarray or ()), 1) for p in parts]
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, subplot_titles=[f"A · {a.label}", f"B · {b.label}"], row_heights=heights
    )
    for row, part in enumerate(parts, start=1):
        for trace in part.data:
            trace.showlegend = False
            fig.add_trace(trace, row=row, col=1)
        fig.update_yaxes(
            categoryorder="array", categoryarray=part.layout.yaxis.categoryarray, autorange="reversed", row=row, col=1
        )
    fig.update_xaxes(title_text="ms since the run began", row=2, col=1)
    fig.update_layout(barmode="overlay", height=max(420, 26 * sum(heights) + 160), title="Timelines, A above B")
    return fig


def metrics_table(a: ProfiledRun, b: ProfiledRun) -> list[list[Any]]:
    """One row per metric: A, B, their difference and ratio (a GPU row only where a GPU was sampled)."""
    rows = []
    for label, get, _ in ROWS:
        va, vb = get(a.result), get(b.result)
        if va != va and vb != vb:  # NaN on both sides: not measured here (no GPU)
            continue
        ratio = vb / va if va else float("nan")
        rows.append([label, round(va, 4), round(vb, 4), round(vb - va, 4), round(ratio, 3)])
    return rows


def verdict(a: ProfiledRun, b: ProfiledRun) -> str:
    fast, slow = (a, b) if a.result.metrics.wall_s <= b.result.metrics.wall_s else (b, a)
    f, s = fast.result.metrics, slow.result.metrics
    x = s.wall_s / f.wall_s if f.wall_s > 0 else float("nan")
    return (
        f"**{fast.label}** finished this workload {x:.2f}× faster than **{slow.label}** "
        f"({f.wall_s:.2f} s against {s.wall_s:.2f} s; time to first audio p50 "
        f"{f.ttfa_s.p50 * 1000:.0f} ms against {s.ttfa_s.p50 * 1000:.0f} ms)."
    )


async def compare(
    app: AppState, uploads: Uploads, form: CompareForm, progress: gr.Progress | None = None
) -> tuple[go.Figure, list[list[Any]], str, list[Path]]:
    presets = preset_configs(app.engines.config)
    if form.config_a not in presets or form.config_b not in presets:
        raise gr.Error(f"unknown config; choose from {', '.join(presets)}")
    clip = uploads.read(form.clip)
    work = Workload.of(app.engines.info, form.text, int(form.max_new_tokens), clip)
    run_id, run_dir = app.runs.new_dir("compare")
    runs: list[ProfiledRun] = []
    for side, name in (("A", form.config_a), ("B", form.config_b)):
        config = presets[name]
        if progress is not None:
            progress(0.5 * len(runs), f"{side}: starting {name}")
        requests = work.requests(config, int(form.requests), int(form.seed))
        try:
            async with app.engines.lab.use(config) as engine:
                run = await run_requests(
                    engine, requests, run_dir / side, concurrency=int(form.concurrency), label=f"{side}: {name}"
                )
        except (RequestError, EngineError, LabUnavailable) as exc:
            raise gr.Error(f"{side} ({name}): {exc}") from exc
        if run.result.errors:
            raise gr.Error(f"{side} ({name}): {next(iter(run.result.errors.values()))}")
        runs.append(run)
    a, b = runs
    files = [str(p) for run in runs for k, p in run.files.items() if k != "audio"]
    app.runs.add(
        RunRecord(
            run_id,
            "compare",
            f"{form.config_a} vs {form.config_b}",
            f"lab: {describe(presets[form.config_a])} | lab: {describe(presets[form.config_b])}",
            time.time(),
            runs,
            files,
            {
                "requests": int(form.requests),
                "concurrency": int(form.concurrency),
                "wall_a_s": a.result.metrics.wall_s,
                "wall_b_s": b.result.metrics.wall_s,
            },
        )
    )
    return shared_timeline(a, b), metrics_table(a, b), verdict(a, b), files


def build(app: AppState, uploads: Uploads) -> None:
    names = list(preset_configs(app.engines.config))
    c: dict[str, gr.components.Component] = {}  # the form's components, by field name
    with gr.Row():
        c["config_a"] = gr.Dropdown(names, value=names[0], label="config A")
        c["config_b"] = gr.Dropdown(names, value=names[-1] if len(names) < 4 else names[3], label="config B")
    with gr.Row():
        c["text"] = gr.Textbox("The same words, two engines.", label="text", scale=3)
        c["requests"] = gr.Number(2, precision=0, minimum=1, maximum=32, label="requests")
        c["concurrency"] = gr.Number(2, precision=0, minimum=1, maximum=32, label="concurrency")
        c["max_new_tokens"] = gr.Number(40, precision=0, minimum=2, label="max frames")
        c["seed"] = gr.Number(0, precision=0, label="seed (request i uses seed + i)")
    c["clip"] = uploads.clip_input(sources=["upload"], label="reference clip (voice clone; default: a test tone)")
    go_button = gr.Button("Compare", variant="primary", elem_id="vx-compare")
    verdict_md = gr.Markdown()
    table = gr.Dataframe(headers=["metric", "A", "B", "B − A", "B / A"], label="metrics", interactive=False)
    plot = gr.Plot(label="timelines on a shared time axis")
    files = gr.File(label="traces and metrics", file_count="multiple")

    async def run(*values: Any, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
        fig, rows, line, paths = await compare(app, uploads, CompareForm(*values), progress=progress)
        return line, rows, fig, paths

    go_button.click(run, form_inputs(CompareForm, c), [verdict_md, table, plot, files], api_name="compare")
