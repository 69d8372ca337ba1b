"""Benchmark: a concurrency sweep from the page, config by config on the lab engine (`ui.lab`: the serving engine
is not touched), with progress, the runner's charts and the results to download."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from profiling.figures import concurrency_figure
from ui.lab import LabUnavailable
from ui.profiled import sweep
from ui.state import EngineManager, RunRecord, describe, preset_configs
from ui.views.compare import Workload

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


def parse_levels(text: str) -> list[int]:
    try:
        levels = sorted({int(x) for x in text.replace(" ", "").split(",") if x})
    except ValueError as exc:
        raise gr.Error(f"concurrency levels: comma-separated integers, got {text!r}") from exc
    if not levels or levels[0] < 1 or levels[-1] > 64:
        raise gr.Error("concurrency levels must be between 1 and 64")
    return levels


async def benchmark(
    manager: EngineManager,
    configs: list[str],
    levels: str,
    requests_per_level: float,
    text: str,
    max_new_tokens: float,
    progress: gr.Progress | None = None,
) -> tuple[go.Figure, list[list[Any]], list[Path]]:
    """Outputs: the runner's chart (metrics against concurrency), its table (one row per level), its files."""
    presets = preset_configs(manager)
    unknown = [c for c in configs or [] if c not in presets]
    if not configs or unknown:
        raise gr.Error(f"choose one or more configs from: {', '.join(presets)}")
    concurrencies = parse_levels(levels)
    n = int(requests_per_level)
    if n < 1:
        raise gr.Error("requests per level must be at least 1")
    run_id, run_dir = manager.new_run_dir("benchmark")
    chosen = {name: presets[name] for name in configs}
    work = Workload.of(manager, text, int(max_new_tokens))

    def report(fraction: float, what: str) -> None:
        if progress is not None:
            progress(fraction, what)

    try:
        bench, paths = await sweep(chosen, concurrencies, work.requests, n, run_dir, manager.lab.use, report)
    except LabUnavailable as exc:
        raise gr.Error(str(exc)) from exc
    rows = [lv.row() for lv in bench.levels]
    table = [[r[k] for k in COLUMNS] for r in rows]
    files = [str(paths[k]) for k in ("csv", "json", "html")]
    manager.add_run(
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


def build(manager: EngineManager) -> None:
    names = list(preset_configs(manager))
    configs = gr.Dropdown(names, value=names[:1], multiselect=True, label="configs")
    with gr.Row():
        levels = gr.Textbox("1,2,4", label="concurrency levels")
        per_level = gr.Number(4, precision=0, minimum=1, label="requests per level")
        max_new_tokens = gr.Number(24, precision=0, minimum=2, label="max frames per request")
    text = gr.Textbox("A benchmark sentence of ordinary length.", label="text")
    go_button = gr.Button("Run the sweep", variant="primary", elem_id="vx-benchmark")
    plot = gr.Plot(label="metrics against concurrency")
    table = gr.Dataframe(headers=COLUMNS, label="results", interactive=False)
    files = gr.File(label="results: bench.csv, bench.json, bench.html (charts, opens offline)", file_count="multiple")

    async def run(*args: Any, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
        return await benchmark(manager, *args, progress=progress)

    go_button.click(run, [configs, levels, per_level, text, max_new_tokens], [plot, table, files], api_name="benchmark")
