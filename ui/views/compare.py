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

from engine import EngineConfig, RequestError, SpeechRequest
from engine.model.sampling import SamplingParams
from engine.request import EngineError
from profiling.figures import timeline_figure
from ui.lab import LabUnavailable
from ui.profiled import RunOutcome, run_requests
from ui.state import TINY_TASK_OF, EngineManager, RunRecord, demo_clip, describe, preset_configs
from ui.uploads import Uploads

TASK_OF_TINY = {tiny: task for task, tiny in TINY_TASK_OF.items()}

# (label, getter of a RunOutcome, lower is better)
ROWS: list[tuple[str, Any, bool]] = [
    ("wall time (s)", lambda o: o.run.wall_s, True),
    ("time to first audio p50 (s)", lambda o: o.run.ttfa_s.p50, True),
    ("RTF p50 (lower is faster)", lambda o: o.run.rtf.p50, True),
    ("× real-time p50 (1 / RTF)", lambda o: 1 / o.run.rtf.p50 if o.run.rtf.p50 > 0 else float("nan"), False),
    ("end-to-end p50 (s)", lambda o: o.run.e2e_s.p50, True),
    ("audio s per wall s", lambda o: o.run.audio_s_per_s, False),
    ("underrun p99 (s)", lambda o: o.run.underrun_s.p99, True),
    ("CPU % (engine processes, 100 = a core)", lambda o: o.cpu_percent, True),
    ("GPU busy % (NVML)", lambda o: o.gpu_busy_percent, False),
]


@dataclass
class Workload:
    """The requests of a Compare or Benchmark run: the current checkpoint's task (the tiny model's per config), its
    first speaker, x-vector cloning from the given clip or a test tone; request i samples with seed + i, so both
    sides of a comparison generate the same frames."""

    task: str
    speaker: str | None
    text: str
    max_new_tokens: int
    clip: bytes | None = None

    @classmethod
    def of(cls, manager: EngineManager, text: str, max_new_tokens: int, clip: bytes | None = None) -> Workload:
        model = manager.serving.model
        return cls(model.task, (model.speakers or [None])[0], text, max_new_tokens, clip)

    def requests(self, config: EngineConfig, n: int, seed: int) -> list[SpeechRequest]:
        task = TASK_OF_TINY[config.tiny_task] if config.model is None else self.task
        sampling = SamplingParams(max_new_tokens=self.max_new_tokens)
        kwargs: dict[str, Any] = {}
        if task == "voice_clone":
            kwargs = {"ref_audio": self.clip or demo_clip(), "x_vector_only": True}
        elif task == "custom_voice":
            kwargs = {"speaker": self.speaker if task == self.task else None}
        return [SpeechRequest(self.text, task, sampling=sampling, seed=seed + i, **kwargs) for i in range(n)]


def shared_timeline(a: RunOutcome, b: RunOutcome) -> go.Figure:
    """Both runs' timelines stacked, each from its own start, on one shared x axis (ms since the run began)."""
    parts = [timeline_figure(o.timeline, o.label) for o in (a, b)]
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


def metrics_table(a: RunOutcome, b: RunOutcome) -> list[list[Any]]:
    """One row per metric: A, B, their difference and ratio (a GPU row only where a GPU was sampled)."""
    rows = []
    for label, get, _ in ROWS:
        va, vb = get(a), get(b)
        if va != va and vb != vb:  # NaN on both sides: not measured here (no GPU)
            continue
        ratio = vb / va if va else float("nan")
        rows.append([label, round(va, 4), round(vb, 4), round(vb - va, 4), round(ratio, 3)])
    return rows


def verdict(a: RunOutcome, b: RunOutcome) -> str:
    wa, wb = a.run.wall_s, b.run.wall_s
    fast, slow = (a, b) if wa <= wb else (b, a)
    x = slow.run.wall_s / fast.run.wall_s if fast.run.wall_s > 0 else float("nan")
    return (
        f"**{fast.label}** finished this workload {x:.2f}× faster than **{slow.label}** "
        f"({fast.run.wall_s:.2f} s against {slow.run.wall_s:.2f} s; time to first audio p50 "
        f"{fast.run.ttfa_s.p50 * 1000:.0f} ms against {slow.run.ttfa_s.p50 * 1000:.0f} ms)."
    )


async def compare(
    manager: EngineManager,
    uploads: Uploads,
    config_a: str,
    config_b: str,
    text: str,
    requests: float,
    concurrency: float,
    max_new_tokens: float,
    seed: float,
    clip_path: str | None,
    progress: gr.Progress | None = None,
) -> tuple[go.Figure, list[list[Any]], str, list[Path]]:
    presets = preset_configs(manager)
    if config_a not in presets or config_b not in presets:
        raise gr.Error(f"unknown config; choose from {', '.join(presets)}")
    clip = uploads.read(clip_path)
    work = Workload.of(manager, text, int(max_new_tokens), clip)
    run_id, run_dir = manager.new_run_dir("compare")
    outcomes = []
    for side, name in (("A", config_a), ("B", config_b)):
        config = presets[name]
        if progress is not None:
            progress(0.5 * len(outcomes), f"{side}: starting {name}")
        reqs = work.requests(config, int(requests), int(seed))
        try:
            async with manager.lab.use(config) as engine:
                outcome = await run_requests(
                    engine, reqs, run_dir / side, concurrency=int(concurrency), label=f"{side}: {name}"
                )
        except (RequestError, EngineError, LabUnavailable) as exc:
            raise gr.Error(f"{side} ({name}): {exc}") from exc
        if outcome.errors:
            raise gr.Error(f"{side} ({name}): {next(iter(outcome.errors.values()))}")
        outcomes.append(outcome)
    a, b = outcomes
    files = [str(p) for o in outcomes for k, p in o.files.items() if k != "audio"]
    manager.add_run(
        RunRecord(
            run_id,
            "compare",
            f"{config_a} vs {config_b}",
            f"lab: {describe(presets[config_a])} | lab: {describe(presets[config_b])}",
            time.time(),
            outcomes,
            files,
            {
                "requests": int(requests),
                "concurrency": int(concurrency),
                "wall_a_s": a.run.wall_s,
                "wall_b_s": b.run.wall_s,
            },
        )
    )
    return shared_timeline(a, b), metrics_table(a, b), verdict(a, b), files


def build(manager: EngineManager, uploads: Uploads) -> None:
    names = list(preset_configs(manager))
    with gr.Row():
        config_a = gr.Dropdown(names, value=names[0], label="config A")
        config_b = gr.Dropdown(names, value=names[-1] if len(names) < 4 else names[3], label="config B")
    with gr.Row():
        text = gr.Textbox("The same words, two engines.", label="text", scale=3)
        requests = gr.Number(2, precision=0, minimum=1, maximum=32, label="requests")
        concurrency = gr.Number(2, precision=0, minimum=1, maximum=32, label="concurrency")
        max_new_tokens = gr.Number(40, precision=0, minimum=2, label="max frames")
        seed = gr.Number(0, precision=0, label="seed (request i uses seed + i)")
    clip = uploads.clip_input(sources=["upload"], label="reference clip (voice clone; default: a test tone)")
    go_button = gr.Button("Compare", variant="primary", elem_id="vx-compare")
    verdict_md = gr.Markdown()
    table = gr.Dataframe(headers=["metric", "A", "B", "B − A", "B / A"], label="metrics", interactive=False)
    plot = gr.Plot(label="timelines on a shared time axis")
    files = gr.File(label="traces and metrics", file_count="multiple")

    async def run(*args: Any, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
        fig, rows, line, paths = await compare(manager, uploads, *args, progress=progress)
        return line, rows, fig, paths

    go_button.click(
        run,
        [config_a, config_b, text, requests, concurrency, max_new_tokens, seed, clip],
        [verdict_md, table, plot, files],
        api_name="compare",
    )
