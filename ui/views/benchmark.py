"""Benchmark: a concurrency sweep from the page, config by config on the lab engines (`ui.lab`: the serving engine
is not touched) or against an OpenAI-compatible speech server by URL, with progress, the runner's charts and the
results to download."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from profiling.figures import concurrency_figure
from profiling.sweep import Bench, ServerUnusable, sweep_url
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
    "continuity_c50",
    "continuity_c100",
    "continuity_c200",
]


@dataclass
class BenchmarkForm:
    """The Benchmark page's inputs, in the order its components are sent."""

    configs: list[str]
    levels: str  # comma-separated concurrency levels
    requests_per_level: float
    text: str
    max_new_tokens: float
    url: str  # an OpenAI-compatible speech server instead of the configs ("": the configs)


def parse_levels(text: str) -> list[int]:
    try:
        levels = sorted({int(x) for x in text.replace(" ", "").split(",") if x})
    except ValueError as exc:
        raise gr.Error(f"concurrency levels: comma-separated integers, got {text!r}") from exc
    if not levels or levels[0] < 1 or levels[-1] > 64:
        raise gr.Error("concurrency levels must be between 1 and 64")
    return levels


def rounded(value: Any) -> Any:
    """A table cell as people read it: floats to 3 significant digits (0.0123, 1.23, 123); NaN (a figure no request
    gave, such as C50 when none came in more than one chunk) as an empty cell."""
    if not isinstance(value, float):
        return value
    return None if value != value else float(f"{value:.3g}")


async def benchmark(
    app: AppState, form: BenchmarkForm, progress: gr.Progress | None = None
) -> tuple[go.Figure, list[list[Any]], list[Path]]:
    """Outputs: the runner's chart (metrics against concurrency), its table (one row per level), its files."""
    concurrencies = parse_levels(form.levels)
    n = int(form.requests_per_level)
    if n < 1:
        raise gr.Error("requests per level must be at least 1")
    work = Workload.of(app.engines.info, form.text, int(form.max_new_tokens))

    def report(fraction: float, what: str) -> None:
        if progress is not None:
            progress(fraction, what)

    if form.url.strip():
        try:
            url = app.remotes.check(form.url)
        except ValueError as exc:
            raise gr.Error(f"server URL: {exc}") from exc
        total, done = 1 + len(concurrencies) * n, 0  # one warm-up request first: it also checks the server

        def tick(_: int) -> None:
            nonlocal done
            done += 1
            report(done / total, f"{done}/{total} requests")

        try:
            levels = await asyncio.to_thread(
                sweep_url, url, work.bodies, concurrencies, n, warmup=1, sample_rate=app.engines.info.sample_rate,
                label=url, progress=tick,
            )  # fmt: skip
        except ServerUnusable as exc:
            raise gr.Error(str(exc)) from None
        run_id, run_dir = app.runs.new_dir("benchmark")
        bench = Bench(levels, {"target": url, "configs": [url]})
        paths, config = bench.write(run_dir), f"remote: {url}"
    else:
        presets = preset_configs(app.engines.config)
        unknown = [c for c in form.configs or [] if c not in presets]
        if not form.configs or unknown:
            raise gr.Error(f"choose one or more configs from: {', '.join(presets)}, or give a server URL")
        run_id, run_dir = app.runs.new_dir("benchmark")
        chosen = {name: presets[name] for name in form.configs}
        try:
            bench, paths = await sweep(chosen, concurrencies, work.requests, n, run_dir, app.engines.lab.use, report)
        except LabUnavailable as exc:
            raise gr.Error(str(exc)) from exc
        config = " | ".join(f"lab: {describe(c)}" for c in chosen.values())
    table = [[rounded(row[k]) for k in COLUMNS] for row in (level.row() for level in bench.levels)]
    files = [str(paths[k]) for k in ("csv", "json", "html")]
    figure = concurrency_figure(bench.series())
    app.runs.add(
        RunRecord(
            run_id,
            "benchmark",
            f"sweep c={concurrencies} × {len(bench.series())} series",
            config,
            time.time(),
            [],
            files,
            {"levels": concurrencies, "series": list(bench.series())},
            figure,
        )
    )
    return figure, table, files


def build(app: AppState) -> None:
    names = list(preset_configs(app.engines.config))
    c: dict[str, gr.components.Component] = {}  # the form's components, by field name
    c["configs"] = gr.Dropdown(names, value=names[:1], multiselect=True, label="configs")
    with gr.Row():
        c["levels"] = gr.Textbox("1,2,4", label="concurrency levels")
        c["requests_per_level"] = gr.Number(4, precision=0, minimum=1, label="requests per level")
        c["max_new_tokens"] = gr.Number(24, precision=0, minimum=2, label="max frames per request")
    c["text"] = gr.Textbox("A benchmark sentence of ordinary length.", label="text")
    c["url"] = gr.Textbox(
        "",
        label="or a server's URL (an OpenAI-compatible speech API, e.g. http://127.0.0.1:8000): swept instead; "
        f"allowed: {app.remotes.describe()}",
    )
    go_button = gr.Button("Run the sweep", variant="primary", elem_id="vx-benchmark")
    plot = gr.Plot(label="metrics against concurrency", elem_id="vx-benchmark-chart")
    table = gr.Dataframe(headers=COLUMNS, label="results", interactive=False, elem_id="vx-benchmark-table")
    files = gr.File(label="results: bench.csv, bench.json, bench.html (charts, opens offline)", file_count="multiple")

    async def run(*values: Any, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
        return await benchmark(app, BenchmarkForm(*values), progress=progress)

    go_button.click(run, form_inputs(BenchmarkForm, c), [plot, table, files], api_name="benchmark")
