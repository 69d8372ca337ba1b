"""Compare: the same requests on two sides, one after the other; a side is a config on a lab engine (`ui.lab`: the
serving engine is not touched; the engines stay warm between clicks) or a remote OpenAI-compatible speech server by
URL (measured by the profiler's client, `profiling.speech_client`, on the same client-side figures). Both timelines on
one time axis, the metrics side by side with the difference, the downloads named by side, and a one-line verdict."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine import EngineConfig, EngineError, RequestError
from profiling.figures import timeline_figure
from ui.describe import describe
from ui.engines import preset_configs
from ui.lab import LabUnavailable
from ui.profiled import ProfiledRun, run_requests, run_url
from ui.remotes import RemoteServers
from ui.run_store import RunRecord
from ui.state import AppState
from ui.uploads import Uploads
from ui.views.form import form_inputs
from ui.views.workload import Workload


def _per_transfer(result: Any, value: float) -> float:
    """`value`, or nan for a run with no hand-offs seen (a remote server's: only its client is timed here)."""
    return value if result.ipc.transfers else float("nan")


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
    # what the executors cost (mp against ray, say): every hand-off between stages, from the profiler's spans
    ("stage hand-offs (count)", lambda r: r.ipc.transfers or float("nan"), True),
    ("hand-off p50 (ms, sender's stamp to pickup)", lambda r: _per_transfer(r, r.ipc.handoff_s.p50 * 1e3), True),
    (
        "transport cost per hand-off (µs: serialize + copy + wait)",
        lambda r: _per_transfer(r, (r.ipc.serialize_s + r.ipc.copy_s + r.ipc.wait_s) / max(r.ipc.transfers, 1) * 1e6),
        True,
    ),
]
REMOTE_NOTE = "A remote server's CPU and GPU are not sampled from here: its figures are what the client measured."


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
    url_a: str = ""  # a remote server for side A instead of config_a; empty: the config
    url_b: str = ""


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a preset config on a lab engine, or a remote server (`url`, checked)."""

    name: str  # "A" or "B"
    label: str  # "A · current · uni-uni", "B · http://host:8000": titles, verdict, the Runs view
    file_prefix: str  # "A-uni-uni", "B-remote-host-8000": the downloads' names
    config: EngineConfig | None = None
    url: str | None = None

    def describe(self) -> str:
        return f"remote: {self.url}" if self.config is None else f"lab: {describe(self.config)}"


def sides(presets: dict[str, EngineConfig], form: CompareForm, remotes: RemoteServers) -> list[Side]:
    """The form's two sides; a bad URL (or one `remotes` does not allow) or an unknown config is refused by name."""
    out = []
    for name, choice, url in (("A", form.config_a, form.url_a), ("B", form.config_b, form.url_b)):
        if url and url.strip():
            try:
                url = remotes.check(url)
            except ValueError as exc:
                raise gr.Error(f"{name}: {exc}") from None
            host = re.sub(r"[^A-Za-z0-9.]+", "-", url.split("://", 1)[1]).strip("-")
            out.append(Side(name, f"{name} · {url}", f"{name}-remote-{host}", url=url))
        elif choice in presets:
            short = choice.removeprefix("current · ").removesuffix(".yaml")
            out.append(Side(name, f"{name} · {choice}", f"{name}-{short}", config=presets[choice]))
        else:
            raise gr.Error(f"{name}: unknown config {choice!r}; choose from {', '.join(presets)}, or give a URL")
    return out


def shared_timeline(a: ProfiledRun, b: ProfiledRun) -> go.Figure:
    """Both runs' timelines stacked, each from its own start, on one shared x axis (ms since the run began)."""
    parts = [timeline_figure(run.result.timeline, run.label) for run in (a, b)]
    heights = [max(len(p.layout.yaxis.categoryarray or ()), 1) for p in parts]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=[a.label, b.label], row_heights=heights)
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
    """One row per metric: A, B, their difference and ratio; a figure not measured on a side (a remote server's CPU)
    is empty, and a row measured on neither (no GPU) is left out."""
    rows = []
    for label, get, _ in ROWS:
        va, vb = get(a.result), get(b.result)
        if va != va and vb != vb:
            continue
        ratio = vb / va if va else float("nan")
        rows.append([label, *(round(v, 4) if v == v else None for v in (va, vb, vb - va, ratio))])
    return rows


def verdict(a: ProfiledRun, b: ProfiledRun) -> str:
    """Which side finished this workload sooner, by how much, with both first-audio and throughput figures."""
    fast, slow = (a, b) if a.result.metrics.wall_s <= b.result.metrics.wall_s else (b, a)
    f, s = fast.result.metrics, slow.result.metrics
    x = s.wall_s / f.wall_s if f.wall_s > 0 else float("nan")
    return (
        f"`{fast.label}` was {x:.2f}× faster than `{slow.label}` for this workload "
        f"({f.wall_s:.2f} s against {s.wall_s:.2f} s; time to first audio p50 {f.ttfa_s.p50 * 1000:.0f} ms against "
        f"{s.ttfa_s.p50 * 1000:.0f} ms; {f.audio_s_per_s:.2f} against {s.audio_s_per_s:.2f} audio s per wall s)."
    )


async def run_side(
    app: AppState, side: Side, work: Workload, form: CompareForm, run_dir: Path, report: Callable[[str, float], None]
) -> ProfiledRun:
    """One side's requests (request i with seed + i), on its lab engine or its server; `report(text, share done)`."""
    n = int(form.requests)

    def progress(done: int, total: int) -> None:
        report(f"{side.name}: {done}/{total} requests", done / total)

    try:
        if side.url is not None:
            report(f"{side.name}: sending {n} requests to {side.url}", 0)
            bodies = work.bodies(n, int(form.seed))
            rate = app.engines.info.sample_rate
            return await run_url(side.url, bodies, run_dir, rate, int(form.concurrency), side.label, progress)
        assert side.config is not None
        warm = app.engines.lab.engine_if_up(side.config) is not None
        report(f"{side.name}: {'engine warm' if warm else 'starting the engine'} ({describe(side.config)})", 0)
        requests = work.requests(side.config, n, int(form.seed))
        async with app.engines.lab.use(side.config) as engine:
            return await run_requests(engine, requests, run_dir, int(form.concurrency), side.label, progress=progress)
    except (RequestError, EngineError, LabUnavailable) as exc:
        raise gr.Error(f"{side.label}: {exc}") from None


async def compare(
    app: AppState, uploads: Uploads, form: CompareForm, progress: gr.Progress | None = None
) -> tuple[go.Figure, list[list[Any]], str, list[str]]:
    """Both sides in turn; (timelines, metrics table, verdict, downloads)."""
    pair = sides(preset_configs(app.engines.config), form, app.remotes)
    clip = uploads.read(form.clip)
    work = Workload.of(app.engines.info, form.text, int(form.max_new_tokens), clip)
    run_id, run_dir = app.runs.new_dir("compare")
    runs: list[ProfiledRun] = []
    files: list[str] = []
    for side in pair:

        def report(text: str, share: float) -> None:
            if progress is not None:
                progress(0.5 * (len(runs) + share), desc=text)  # runs: the sides done before this one

        run = await run_side(app, side, work, form, run_dir / side.name, report)
        if run.result.errors:
            raise gr.Error(f"{side.label}: {next(iter(run.result.errors.values()))}")
        runs.append(run)
        files += [str(named(path, run_dir / f"{side.file_prefix}-{path.name}")) for path in downloads(run)]
    a, b = runs
    app.runs.add(
        RunRecord(
            run_id,
            "compare",
            f"{a.label} vs {b.label}",
            " | ".join(s.describe() for s in pair),
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
    line = verdict(a, b) + (f"\n\n{REMOTE_NOTE}" if any(s.url for s in pair) else "")
    return shared_timeline(a, b), metrics_table(a, b), line, files


def downloads(run: ProfiledRun) -> list[Path]:
    """A side's files to download: its trace and metrics (the audio stays in the run folder)."""
    return [path for kind, path in run.files.items() if kind != "audio"]


def named(path: Path, link: Path) -> Path:
    """`path` under the name `link` as well (a hard link: the run folder keeps its layout for the Runs view)."""
    link.hardlink_to(path)
    return link


def build(app: AppState, uploads: Uploads) -> None:
    names = list(preset_configs(app.engines.config))
    c: dict[str, gr.components.Component] = {}  # the form's components, by field name
    url_label = (
        "or a remote OpenAI-compatible speech server (its URL, e.g. http://host:8000; empty: the config; "
        f"allowed: {app.remotes.describe()})"
    )
    with gr.Row():
        with gr.Column():
            c["config_a"] = gr.Dropdown(names, value=names[0], label="A: config", elem_id="vx-compare-config-a")
            c["url_a"] = gr.Textbox("", label=f"A: {url_label}", elem_id="vx-compare-url-a")
        with gr.Column():
            default_b = "current · mp-mp" if "current · mp-mp" in names else names[-1]  # uni against mp, to start with
            c["config_b"] = gr.Dropdown(names, value=default_b, label="B: config", elem_id="vx-compare-config-b")
            c["url_b"] = gr.Textbox("", label=f"B: {url_label}", elem_id="vx-compare-url-b")
    with gr.Row():
        c["text"] = gr.Textbox("The same words, two engines.", label="text", scale=3)
        c["requests"] = gr.Number(2, precision=0, minimum=1, maximum=32, label="requests")
        c["concurrency"] = gr.Number(2, precision=0, minimum=1, maximum=32, label="concurrency")
        c["max_new_tokens"] = gr.Number(40, precision=0, minimum=2, label="max frames", elem_id="vx-compare-frames")
        c["seed"] = gr.Number(0, precision=0, label="seed (request i uses seed + i)")
    c["clip"] = uploads.clip_input(sources=["upload"], label="reference clip (voice clone; default: a test tone)")
    lab = gr.Markdown(lambda: app.engines.lab.status().markdown(), elem_id="vx-lab-status")  # refreshed on load
    go_button = gr.Button("Compare", variant="primary", elem_id="vx-compare")
    verdict_md = gr.Markdown(elem_id="vx-compare-verdict")
    table = gr.Dataframe(
        headers=["metric", "A", "B", "B − A", "B / A"], label="metrics", interactive=False, elem_id="vx-compare-metrics"
    )
    plot = gr.Plot(label="timelines on a shared time axis")
    files = gr.File(label="traces and metrics, named by side", file_count="multiple", elem_id="vx-compare-files")

    async def run(*values: Any, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
        fig, rows, line, paths = await compare(app, uploads, CompareForm(*values), progress=progress)
        return line, rows, fig, paths

    clicked = go_button.click(run, form_inputs(CompareForm, c), [verdict_md, table, plot, files], api_name="compare")
    clicked.then(
        lambda: app.engines.lab.status().markdown(), None, [lab], api_visibility="private"
    )  # even after an error
