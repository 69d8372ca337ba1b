"""Tune: search the engine's config space for a workload (`profiling.tune`) on the lab engine (`ui.lab`: the serving
engine is not touched), with the chart filling in as runs finish, the table of candidates with their spread, the
evidence for each changed knob, and the recommended config to download."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import gradio as gr
import yaml

from engine import Engine, EngineConfig
from engine.config import ConfigError
from profiling.evaluate import EngineEvaluator
from profiling.search import Candidate, Measurement
from profiling.space import KNOBS, apply, candidate_points, space
from profiling.tune import parse_budget, tune
from profiling.tune_report import TABLE, TuneReport, candidate_rows, pareto_figure
from profiling.workload import Workload
from ui.describe import describe
from ui.engines import CONFIG_DIR, preset_configs
from ui.lab import LabEngine
from ui.run_store import RunRecord
from ui.state import AppState
from ui.views.form import form_inputs

WORKLOAD_DIR = CONFIG_DIR / "workloads"
MAX_PAGE_BUDGET_S = 30 * 60.0  # a page's search holds the one lab engine: bounded, so it cannot hold it for hours


def workload_files(folder: Path = WORKLOAD_DIR) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.glob("*.yaml"))}


def parse_workload(text: str) -> Workload:
    try:
        raw = yaml.safe_load(text) or {}
        return Workload.from_dict({"name": "page", **raw} if isinstance(raw, dict) else raw)
    except (yaml.YAMLError, ConfigError) as exc:
        raise gr.Error(f"workload: {exc}") from exc


class LabEngines:
    """The search's engines from the app's lab engine: `lab.use(config)` is entered on the app's event loop (the
    search runs in a worker thread) and held until the search needs another config, or ends. One is held at a time
    (`keep`): the pool may keep the others warm, but may also close them for another page, so the search's budget
    counts a set-up for every switch."""

    keep = 1

    def __init__(self, lab: LabEngine, loop: asyncio.AbstractEventLoop) -> None:
        self._lab, self._loop = lab, loop
        self._held: tuple[EngineConfig, Engine, AsyncExitStack] | None = None

    def get(self, config: EngineConfig) -> Engine:
        if self._held is not None and self._held[0] == config:
            return self._held[1]
        self.close()
        stack = AsyncExitStack()
        engine = asyncio.run_coroutine_threadsafe(stack.enter_async_context(self._lab.use(config)), self._loop).result()
        self._held = (config, engine, stack)
        return engine

    def close(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            asyncio.run_coroutine_threadsafe(held[2].aclose(), self._loop).result()


@dataclasses.dataclass
class TuneForm:
    """The Tune page's inputs, in the order its components are sent."""

    base: str  # the preset config to start from
    workload: str  # the workload's YAML
    budget: str  # 90s, 10m, 1h
    knobs: list[str]  # what to search, unless the workload has `space:`
    max_candidates: float


def table(rows: list[dict[str, Any]]) -> list[list[Any]]:
    return [[round(r[k], 4) if isinstance(r[k], float) else r[k] for k in TABLE] for r in rows]


def findings(report: TuneReport) -> str:
    evidence = "".join(f"\n- {e.sentence}" for e in report.evidence)
    return f"**{report.verdict()}**" + (f"\n\nEvidence, knob by knob:{evidence}" if evidence else "")


def searching(runs: int, seen: int, candidates: int, elapsed_s: float, budget_s: float) -> str:
    """The findings' place while a search runs: how far it is (Gradio's progress bar leaves once a generator has
    yielded, so the page says it here)."""
    return (
        f"*Searching: runs finished {runs}, candidates measured {seen} of {candidates}+, {elapsed_s:.0f} s of a "
        f"{budget_s:.0f} s budget.*"
    )


async def run_tune(app: AppState, form: TuneForm) -> AsyncIterator[tuple[Any, ...]]:
    """Yields (chart, table, findings, recommended YAML, files): at once, the last search's cleared; the first three
    as each run finishes, the findings saying how far the search is; then all of them."""
    presets = preset_configs(app.engines.config)
    if form.base not in presets:
        raise gr.Error(f"choose a config to start from: {', '.join(presets)}")
    workload = parse_workload(form.workload)
    try:
        budget_s = parse_budget(form.budget)
    except ValueError as exc:
        raise gr.Error(str(exc)) from exc
    if not 0 < budget_s <= MAX_PAGE_BUDGET_S:
        raise gr.Error(f"budget: between 1s and {MAX_PAGE_BUDGET_S / 60:.0f}m on this page (the command has no cap)")
    base = presets[form.base]
    if base.model is None and workload.tiny_task:
        base = dataclasses.replace(base, tiny_task=workload.tiny_task)
    if not workload.space and not form.knobs:
        raise gr.Error("choose at least one knob to search (or give the workload a `space:`)")
    try:
        chosen = space(KNOBS, workload.space or {k.key: list(k.values) for k in KNOBS if k.key in form.knobs})
        points = candidate_points(base, chosen, max(2, int(form.max_candidates)))
        for point in points:
            apply(base, point)
    except ConfigError as exc:
        raise gr.Error(f"space: {exc}") from exc
    run_id, run_dir = app.runs.new_dir("tune")
    loop = asyncio.get_running_loop()
    measured: asyncio.Queue[Candidate] = asyncio.Queue()

    def on_measure(c: Candidate, m: Measurement) -> None:  # the search's thread: hand over a copy
        copy = dataclasses.replace(c, runs={n: list(ms) for n, ms in c.runs.items()}, notes=list(c.notes))
        loop.call_soon_threadsafe(measured.put_nowait, copy)

    serving = app.engines.serving
    tiny = serving.info.tiny and base.model is None and base.tiny_task == serving.config.tiny_task
    checkpoint = serving.checkpoint if tiny else None  # the serving engine's tiny model, not another one

    def search() -> TuneReport:
        with EngineEvaluator(base, workload, engines=LabEngines(app.engines.lab, loop), checkpoint=checkpoint) as ev:
            return tune(workload, ev, points, budget_s, base=base, on_measure=on_measure, meta={"base": form.base})

    start = time.monotonic()
    yield None, [], searching(0, 0, len(points), 0, budget_s), "", []
    job = asyncio.ensure_future(asyncio.to_thread(search))
    seen: dict[str, Candidate] = {}
    runs = 0
    while not job.done() or not measured.empty():
        item = asyncio.ensure_future(measured.get())
        done, _ = await asyncio.wait({job, item}, return_when=asyncio.FIRST_COMPLETED)
        if item not in done:
            item.cancel()
            continue
        c = item.result()
        seen[c.id], runs = c, runs + 1
        shown = list(seen.values())
        chart = pareto_figure(shown, workload.objective, workload.slo)
        status = searching(runs, len(seen), len(points), time.monotonic() - start, budget_s)
        yield chart, table(candidate_rows(shown, workload.objective, workload.slo)), status, gr.skip(), []
    try:
        report = job.result()
    except Exception as exc:  # a search that cannot run at all (the workload does not fit the model, the lab is busy)
        raise gr.Error(f"tune: {exc}") from exc
    paths = report.write(run_dir)
    files = [str(paths[k]) for k in ("yaml", "html", "json", "csv") if k in paths]
    rec = report.recommended
    app.runs.add(
        RunRecord(
            run_id,
            "tune",
            f"tune {workload.name}: {rec.label if rec else 'no recommendation'}",
            f"lab: {describe(base)}",
            time.time(),
            [],
            files,
            {"candidates": len(report.result.candidates), "spent_s": report.result.spent_s + report.verify_s},
            report.figure(),
        )
    )
    yield report.figure(), table(report.rows()), findings(report), report.config_yaml or "", files


def build(app: AppState) -> None:
    names = list(preset_configs(app.engines.config))
    files = workload_files()
    first = next(iter(files), None)
    c: dict[str, gr.components.Component] = {}  # the form's components, by field name
    with gr.Row():
        c["base"] = gr.Dropdown(names, value=names[0], label="engine config to start from")
        chosen = gr.Dropdown(list(files), value=first, label="workload (configs/workloads/)")
        c["budget"] = gr.Textbox("2m", label="budget (90s, 10m, 1h)", elem_id="vx-tune-budget")
        c["max_candidates"] = gr.Number(
            8, precision=0, minimum=2, maximum=64, label="max candidates", elem_id="vx-tune-max-candidates"
        )
    text = files[first].read_text() if first else ""
    c["workload"] = gr.Code(text, language="yaml", label="workload (editable)", elem_id="vx-tune-workload")
    c["knobs"] = gr.CheckboxGroup(
        [k.key for k in KNOBS], value=[k.key for k in KNOBS], label="knobs to search (unless the workload has space:)"
    )
    go_button = gr.Button("Tune", variant="primary", elem_id="vx-tune")
    plot = gr.Plot(label="candidates: audio-s/s against TTFA p99 (fills in as runs finish)", elem_id="vx-tune-chart")
    verdict = gr.Markdown(elem_id="vx-tune-verdict")
    results = gr.Dataframe(headers=list(TABLE), label="candidates", interactive=False, elem_id="vx-tune-table")
    config = gr.Code(
        language="yaml", label="recommended.yaml (for app.py --config)", interactive=False, elem_id="vx-tune-yaml"
    )
    downloads = gr.File(
        label="recommended.yaml, tune.html (opens offline), tune.json, tune.csv",
        file_count="multiple",
        elem_id="vx-tune-files",
    )

    chosen.change(lambda name: files[name].read_text(), chosen, c["workload"], api_visibility="private")

    async def run(*values: Any) -> AsyncIterator[tuple[Any, ...]]:
        async for update in run_tune(app, TuneForm(*values)):
            yield update

    go_button.click(run, form_inputs(TuneForm, c), [plot, results, verdict, config, downloads], api_name="tune")
