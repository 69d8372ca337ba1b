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


ONE_RUN = ("timeline", "utilization", "overhead breakdown")
CHARTS = {"benchmark": "metrics against concurrency", "tune": "the search: every candidate measured"}


def open_run(runs: RunStore, run_id: str | None) -> tuple[Any, ...]:
    """The run's cards, its figures and its files. Every plot is set on every open (the run's own figure, or cleared
    and hidden where the run has none), so nothing of the run shown before stays on screen."""
    record = runs.get(run_id or "")
    if record is None:
        raise gr.Error(f"no run {run_id!r} in this session")
    if not record.profiled:  # a benchmark or a tune: its chart; the rest is in its files
        cards, shown = f"{record.title}: see the files.", (record.figure, None, None)
        labels = (CHARTS.get(record.kind, "chart"), "", "")
    elif len(record.profiled) == 2:  # a comparison: both timelines on one axis
        cards, shown = record.title, (shared_timeline(*record.profiled), None, None)
        labels = ("both timelines, on one axis", "", "")
    else:
        run = record.profiled[0]
        seed = next(iter(run.seeds.values()), None)
        cards, shown, labels = request_cards(run.result.per_request[0], seed, run.heard), figures(run), ONE_RUN
    plots = [gr.update(value=f, label=label, visible=f is not None) for f, label in zip(shown, labels, strict=True)]
    return cards, *plots, record.files


def build(runs: RunStore) -> tuple[gr.Dataframe, gr.Dropdown]:
    """The view; returns the table and the run picker, which the app refreshes when the tab opens."""
    shown = gr.Dataframe(headers=COLUMNS, label="this session's runs", interactive=False)
    with gr.Row():
        refresh_button = gr.Button("refresh", size="sm")
        choice = gr.Dropdown([], label="run", allow_custom_value=True)
        open_button = gr.Button("open", variant="primary", elem_id="vx-open-run")
    cards = gr.HTML()
    timeline, util, overhead = (gr.Plot(label=label, elem_id=f"vx-run-plot-{i}") for i, label in enumerate(ONE_RUN))
    files = gr.File(
        label="audio, Perfetto trace (ui.perfetto.dev), TensorBoard folder (zip), metrics", file_count="multiple"
    )
    refresh_button.click(lambda: refresh(runs), None, [shown, choice], api_name="list_runs")
    open_button.click(
        lambda r: open_run(runs, r), [choice], [cards, timeline, util, overhead, files], api_name="open_run"
    )
    return shown, choice
