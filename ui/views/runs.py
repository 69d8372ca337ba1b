"""Runs: every run of this session with its metrics; open one again, and get its traces."""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from ui.run_store import RunStore
from ui.views.compare import shared_timeline
from ui.views.render import figures, request_cards

COLUMNS = ["run", "kind", "title", "config", "time", "metrics"]


def table(runs: RunStore) -> list[list[Any]]:
    return [
        [
            r.id,
            r.kind,
            r.title,
            r.config,
            time.strftime("%H:%M:%S", time.localtime(r.created)),
            ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.summary.items()),
        ]
        for r in runs.newest_first()
    ]


def refresh(runs: RunStore) -> tuple[Any, Any]:
    ids = [r.id for r in runs.newest_first()]
    return table(runs), gr.update(choices=ids, value=ids[0] if ids else None)


def open_run(runs: RunStore, run_id: str | None) -> tuple[Any, ...]:
    """The run's cards, its timeline (both, for a comparison; a sweep's chart), utilization and overhead, and its
    files; a chart the run does not have is cleared, so nothing of the run shown before stays on screen."""
    record = runs.get(run_id or "")
    if record is None:
        raise gr.Error(f"no run {run_id!r} in this session")
    if not record.profiled:  # a benchmark (its chart) or a tune: the rest is in its files
        return f"{record.title}: see the files.", record.figure, None, None, record.files
    if len(record.profiled) == 2:  # a comparison: both timelines on one axis, nothing of another run
        a, b = record.profiled
        return f"{record.title}", shared_timeline(a, b), None, None, record.files
    run = record.profiled[0]
    timeline, util, overhead = figures(run)
    seed = next(iter(run.seeds.values()), None)
    return request_cards(run.result.per_request[0], seed, run.heard), timeline, util, overhead, record.files


def build(runs: RunStore) -> tuple[gr.Dataframe, gr.Dropdown]:
    """The view; returns the table and the run picker, which the app refreshes when the tab opens."""
    shown = gr.Dataframe(headers=COLUMNS, label="this session's runs", interactive=False)
    with gr.Row():
        refresh_button = gr.Button("refresh", size="sm")
        choice = gr.Dropdown([], label="run", allow_custom_value=True)
        open_button = gr.Button("open", variant="primary", elem_id="vx-open-run")
    cards = gr.HTML()
    timeline = gr.Plot(label="timeline")
    util = gr.Plot(label="utilization")
    overhead = gr.Plot(label="overhead breakdown")
    files = gr.File(
        label="audio, Perfetto trace (ui.perfetto.dev), TensorBoard folder (zip), metrics", file_count="multiple"
    )
    refresh_button.click(lambda: refresh(runs), None, [shown, choice], api_name="list_runs")
    open_button.click(
        lambda r: open_run(runs, r), [choice], [cards, timeline, util, overhead, files], api_name="open_run"
    )
    return shown, choice
