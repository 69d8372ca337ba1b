"""Benchmark: a concurrency sweep from the page, config by config on the lab engine (`ui.lab`: the serving engine
is not touched), with progress, the runner's charts and the results to download."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from profiling.figures import concurrency_figure
from ui.describe import describe
from ui.engines import preset_configs
from ui.lab import LabUnavailable
from ui.profiled import sweep
from ui.run_store import RunRecord
from ui.state import AppState
from ui.views.form import form_inputs
from ui.views.workload import Workload

COLUMNS = [
    "series",
    "concurrency",
    "requests",
    "errors",
    "wall_s",
    "ttfa_s_p50",
    "rtf_p50",
    "audio_s_per_s",
    "underrun_s_p99",
]


@dataclass
class BenchmarkForm:
    """The Benchmark page's inputs, in the order its components are sent."""

    configs: list[str]
    levels: str  # comma-separated concurrency levels
    requests_per_level: float
    text: str
    max_new_tokens: float


def parse_levels(text: str) -> list[int]:
    try:
        levels = sorted({int(x) for x in text.replace(" ", "").split(",") if x})
    except ValueError as exc:
        raise gr.Error(f"concurrency levels: comma-separated integers, got {text!r}") from exc
    if not levels or levels[0] < 1 or levels[-1] > 64:
        raise gr.Error("concurrency levels must be between 1 and 64")
    return levels


async def benchmark(
    app: AppState, form: BenchmarkForm, progress: gr.Progress | None = None
) -> tuple[go.Figure, list[list[Any]], list[Path]]:
    """Outputs: the runner's chart (metrics against concurrency), its table (one row per level), its files."""
    presets = preset_configs(app.engines.config)
    unknown = [c for c in form.configs or [] if c not in presets]
    if not form.configs or unknown:
        raise gr.Error(f"choose one or more configs from: {', '.join(presets)}")
    concurrencies = parse_levels(form.levels)
    n = int(form.requests_per_level)
    if n < 1:
        raise gr.Error("requests per level must be at least 1")
    run_id, run_dir = app.runs.new_dir("benchmark")
    chosen = {name: presets[name] for name in form.configs}
    work = Workload.of(app.engines.info, form.text, int(form.max_new_tokens))

    def report(fraction: float, what: str) -> None:
        if progress is not None:
            progress(fraction, what)

    try:
        bench, paths = await sweep(chosen, concurrencies, work.requests, n, run_dir, app.engines.lab.use, report)
    except LabUnavailable as exc:
        raise gr.Error(str(exc)) from exc
    rows = [lv.row() for lv in bench.levels]
    table = [[r[k] for k in COLUMNS] for r in rows]
    files = [str(paths[k]) for k in ("csv", "json", "html")]
    app.runs.add(
        RunRecord(
            run_id,
            "benchmark",
            f"sweep c={concurrencies} × {len(chosen)} config(s)",
            " | ".join(f"lab: {describe(c)}" for c in chosen.values()),
            time.time(),
            [],
            files,
            {"levels": concurrencies, "configs": list(chosen)},
        )
    )
    return concurrency_figure(bench.series()), table, files


def build(app: AppState) -> None:
    names = list(preset_configs(app.engines.config))
    c: dict[str, gr.components.Component] = {}  # the form's components, by field name
    c["configs"] = gr.Dropdown(names, value=names[:1], multiselect=True, label="configs")
    with gr.Row():
        c["levels"] = gr.Textbox("1,2,4", label="concurrency levels")
        c["requests_per_level"] = gr.Number(4, precision=0, minimum=1, label="requests per level")
        c["max_new_tokens"] = gr.Number(24, precision=0, minimum=2, label="max frames per request")
    c["text"] = gr.Textbox("A benchmark sentence of ordinary length.", label="text")
    go_button = gr.Button("Run the sweep", variant="primary", elem_id="vx-benchmark")
    plot = gr.Plot(label="metrics against concurrency")
    table = gr.Dataframe(headers=COLUMNS, label="results", interactive=False)
    files = gr.File(label="results: bench.csv, bench.json, bench.html (charts, opens offline)", file_count="multiple")

    async def run(*values: Any, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
        return await benchmark(app, BenchmarkForm(*values), progress=progress)

    go_button.click(run, form_inputs(BenchmarkForm, c), [plot, table, files], api_name="benchmark")
