"""Synthesize: one request, its audio streamed into our player as it is made, and the run's profile beside it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr

from engine import EngineConfig, EngineError, RequestError, SamplingError, SamplingParams, SpeechRequest, Task
from engine.config import ChunkingConfig, ConfigError
from ui.describe import describe
from ui.engines import Engines, EngineUse
from ui.lab import LabUnavailable
from ui.player import PLAYER_JS, PLAYER_TEMPLATE
from ui.profiled import run_requests
from ui.run_store import RunRecord
from ui.state import AppState
from ui.uploads import Uploads
from ui.views import saved_voices
from ui.views.form import form_inputs
from ui.views.render import capture_note, figures, request_cards
from ui.voices import VoiceLibrary


@dataclasses.dataclass
class SynthesisForm:
    """The Synthesize page's inputs, in the order its components are sent: the request, then the engine settings."""

    task: str
    text: str
    language: str
    ref_audio: str | None  # an upload's server path (`ui.uploads`)
    ref_text: str
    x_vector_only: bool
    saved_voice: str | None
    speaker: str | None
    instruct: str
    do_sample: bool
    temperature: float
    top_k: float
    top_p: float
    max_new_tokens: float
    seed: float | None  # < 0 or None: the engine picks one and the page shows it
    talker_executor: str
    code2wav_executor: str
    max_num_seqs: float
    first_chunk_frames: float
    chunk_frames: float
    torch_capture: bool

    def engine_config(self, base: EngineConfig) -> EngineConfig:
        """`base` with the page's engine settings; the rest of the config stays as loaded."""
        return dataclasses.replace(
            base,
            talker=dataclasses.replace(base.talker, executor=self.talker_executor, max_num_seqs=int(self.max_num_seqs)),
            code2wav=dataclasses.replace(base.code2wav, executor=self.code2wav_executor),
            chunking=ChunkingConfig(int(self.first_chunk_frames), int(self.chunk_frames)),
        )


def engine_controls(config: EngineConfig) -> dict[str, gr.components.Component]:
    """Executor per stage and the main engine settings, by their `SynthesisForm` names, set as `config` has them."""
    with gr.Row():
        talker = gr.Radio(["uni", "mp"], value=config.talker.executor, label="talker executor")
        code2wav = gr.Radio(["uni", "mp"], value=config.code2wav.executor, label="code2wav executor")
    with gr.Row():
        seqs = gr.Slider(1, 32, value=config.talker.max_num_seqs, step=1, label="talker max_num_seqs")
        first = gr.Slider(
            1, 16, value=config.chunking.first_chunk_frames, step=1, label="first chunk (frames of 80 ms)"
        )
        steady = gr.Slider(1, 32, value=config.chunking.chunk_frames, step=1, label="chunk (frames)")
    return {
        "talker_executor": talker,
        "code2wav_executor": code2wav,
        "max_num_seqs": seqs,
        "first_chunk_frames": first,
        "chunk_frames": steady,
    }


def build_request(voices: VoiceLibrary, uploads: Uploads, form: SynthesisForm) -> SpeechRequest:
    task, x_vector_only = form.task, form.x_vector_only
    clip, transcript = uploads.read(form.ref_audio), form.ref_text or None
    voice = saved_voices.saved_voice(voices, form.saved_voice) if task == Task.VOICE_CLONE and clip is None else None
    if voice is not None:
        clip, transcript, x_vector_only = voice.clip, voice.ref_text, voice.x_vector_only
    try:
        sampling = SamplingParams(
            do_sample=form.do_sample,
            temperature=form.temperature,
            top_k=int(form.top_k),
            top_p=form.top_p,
            subtalker_dosample=form.do_sample,
            subtalker_temperature=form.temperature,
            subtalker_top_k=int(form.top_k),
            subtalker_top_p=form.top_p,
        )
    except SamplingError as exc:
        raise RequestError(exc.field, exc.message) from exc
    seed = form.seed
    return SpeechRequest(
        text=form.text,
        task=task,
        language=form.language or "auto",
        speaker=(form.speaker or None) if task == Task.CUSTOM_VOICE else None,
        instruct=(form.instruct or None) if task != Task.VOICE_CLONE else None,
        ref_audio=clip if task == Task.VOICE_CLONE else None,
        ref_text=transcript if task == Task.VOICE_CLONE and not x_vector_only else None,
        x_vector_only=x_vector_only,
        sampling=sampling,
        seed=None if seed is None or seed < 0 else int(seed),
        max_new_tokens=int(
            form.max_new_tokens
        ),  # on the request, so one past the engine's limit is refused, not capped
    )


async def synthesize(app: AppState, uploads: Uploads, form: SynthesisForm) -> AsyncIterator[tuple[Any, ...]]:
    """Outputs: player stream URL, metric cards, seed used, timeline, utilization, overhead, downloads, status.
    The page's settings run on the serving engine when they are its own, else on the lab engine (`ui.lab`)."""
    engines = app.engines
    # cards, seed, plots, files: the last run's go. None, not "": the later yields then reach a client as "replace"
    # diffs, which gradio_client <= 2.5 applies correctly even when it lost this yield (it can register a fast event
    # after its first message arrived); an "append" onto "" would break it.
    cleared = (None,) * 6
    try:
        config = engines.config_for_task(form.task, form.engine_config(engines.config))
    except ConfigError as exc:
        raise gr.Error(f"engine settings: {exc}") from exc
    try:
        request = build_request(app.voices, uploads, form)
    except RequestError as exc:
        raise gr.Error(str(exc)) from exc
    if engines.if_up(config) is None:
        yield (None, *cleared, f"Starting a lab engine for these settings: {describe(config)} …")
    try:
        async with engines.use(config) as use:
            async for out in _run(app, use, request, bool(form.torch_capture), cleared):
                yield out
    except LabUnavailable as exc:
        raise gr.Error(str(exc)) from exc


async def _run(
    app: AppState, use: EngineUse, request: SpeechRequest, torch_capture: bool, cleared: tuple[None, ...]
) -> AsyncIterator[tuple[Any, ...]]:
    stream = app.streams.open(use.engine.info.sample_rate)
    yield (stream.url, *cleared, f"Generating on {use.label} …")
    run_id, run_dir = app.runs.new_dir("synthesize")
    try:
        run = await run_requests(
            use.engine,
            [request],
            run_dir,
            label=run_id,
            on_chunk=lambda c: stream.push(c.samples),
            torch_capture=torch_capture,
        )
    except (RequestError, EngineError) as exc:
        raise gr.Error(str(exc)) from exc
    finally:
        stream.close()
    result = run.result
    if result.errors or not result.per_request:  # the runner reports a failed request instead of raising
        raise gr.Error(result.errors.get(request.request_id, "the request produced no audio"))
    seed = run.seeds[request.request_id]
    metrics = result.per_request[0]
    record = app.runs.add(
        RunRecord(
            run_id,
            "synthesize",
            request.text[:60],
            f"{use.role}: {describe(use.config)}",
            time.time(),
            [run],
            [str(p) for p in run.files.values()],
            {
                "task": request.task,
                "seed": seed,
                "ttfa_s": metrics.ttfa_s,
                "rtf": metrics.rtf,
                "audio_s": metrics.audio_s,
            },
        )
    )
    timeline, util, overhead = figures(run)
    status = f"Run {record.id} on {use.label}. Seed {seed}: set it above to repeat this run."
    if torch_capture:
        status += " " + capture_note(result)
    yield (stream.url, request_cards(metrics, seed), seed, timeline, util, overhead, record.files, status)


async def prepare_voice(engines: Engines, uploads: Uploads, task: str, ref_audio: str | None) -> Any:
    """Put an uploaded or recorded clip through the encoders at once, while the user still types: Generate then finds
    the voice cached (on the engine that is up for the task: the serving one, or a lab engine already built). A clip
    that a request would be refused for says so now. Returns the status line."""
    clip = uploads.read(ref_audio)
    engine = engines.if_up(engines.config_for_task(task))
    if task != Task.VOICE_CLONE or clip is None or engine is None:
        return gr.skip()
    start = time.perf_counter()
    try:
        future = engine.prepare_voice(clip)
        await asyncio.wait([asyncio.wrap_future(future)])
        voice = future.result()
    except RequestError as exc:
        gr.Warning(str(exc))
        return f"Reference clip refused: {exc}"
    except (EngineError, concurrent.futures.CancelledError):
        return gr.skip()  # a lab engine closed meanwhile: Generate encodes the clip itself
    frames = voice.ref_codes.shape[0] if voice.ref_codes is not None else 0
    return (
        f"Reference clip ready: encoded in {(time.perf_counter() - start) * 1000:.0f} ms ({frames} frames of "
        "reference codes, now warming the decoder)."
    )


async def on_task(engines: Engines, task: str) -> tuple[Any, Any, str]:
    """Offer the task's speakers and languages. On the tiny model another task is another checkpoint: its lab
    engine is built now, so Generate finds it up."""
    try:
        async with engines.use(engines.config_for_task(task)) as use:
            info = use.engine.info
    except LabUnavailable as exc:
        gr.Warning(str(exc))
        return gr.skip(), gr.skip(), f"Task {task} needs a lab engine: {exc}"
    return (
        gr.update(choices=list(info.speakers), value=info.speakers[0] if info.speakers else None),
        gr.update(choices=list(info.languages)),
        f"Task {task} runs on {use.label}.",
    )


def build(app: AppState, uploads: Uploads) -> gr.Dropdown:
    """The view; returns the saved-voice picker, which the app refreshes when a page loads."""
    engines = app.engines
    info = engines.info
    c: dict[str, gr.components.Component] = {}  # the form's components, by field name
    with gr.Row():
        with gr.Column(scale=2):
            c["task"] = gr.Radio([str(t) for t in engines.tasks()], value=str(info.task), label="task")
            c["text"] = gr.Textbox("Hello from Voxtrace, a Qwen3-TTS serving engine.", label="text", lines=3)
            c["language"] = gr.Dropdown(list(info.languages), value="auto", label="language")
            with gr.Accordion("voice", open=True):
                c["ref_audio"] = uploads.clip_input(sources=["upload", "microphone"], label="reference clip")
                c["ref_text"] = gr.Textbox(label="transcript of the clip (voice clone)")
                c["x_vector_only"] = gr.Checkbox(False, label="x-vector only (no transcript needed)")
                c["saved_voice"] = saved = saved_voices.build(
                    app.voices, uploads, c["ref_audio"], c["ref_text"], c["x_vector_only"]
                )
                c["speaker"] = gr.Dropdown(
                    list(info.speakers), value=(info.speakers or (None,))[0], label="speaker (custom voice)"
                )
                c["instruct"] = gr.Textbox(label="instruct (custom voice, voice design)")
            with gr.Accordion("sampling", open=False):
                c["do_sample"] = gr.Checkbox(True, label="sample (off: greedy)")
                with gr.Row():
                    c["temperature"] = gr.Slider(0.1, 2.0, value=0.9, step=0.05, label="temperature")
                    c["top_k"] = gr.Slider(0, 200, value=50, step=1, label="top_k")
                    c["top_p"] = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top_p")
                with gr.Row():
                    c["max_new_tokens"] = gr.Number(200, precision=0, label="max frames (80 ms each)")
                    c["seed"] = gr.Number(-1, precision=0, label="seed (-1: pick one and show it)")
            with gr.Accordion("engine (other settings than the server's run on a lab engine)", open=False):
                c |= engine_controls(engines.config)
                c["torch_capture"] = gr.Checkbox(False, label="torch.profiler capture (TensorBoard folder)")
            go = gr.Button("Generate", variant="primary", elem_id="vx-generate")
        with gr.Column(scale=3):
            player = gr.HTML("", html_template=PLAYER_TEMPLATE, js_on_load=PLAYER_JS, elem_id="vx-player")
            status = gr.Markdown(f"Serving engine: {describe(engines.config)}", elem_id="vx-status")
            cards = gr.HTML("", elem_id="vx-cards")
            seed_used = gr.Number(label="seed used", interactive=False)
            timeline = gr.Plot(label="timeline", elem_id="vx-timeline")
            util = gr.Plot(label="utilization")
            overhead = gr.Plot(label="overhead breakdown")
            files = gr.File(label="downloads: audio, Perfetto trace, metrics", file_count="multiple")

    async def run(*values: Any) -> AsyncIterator[tuple[Any, ...]]:
        async for out in synthesize(app, uploads, SynthesisForm(*values)):
            yield out

    go.click(
        run,
        form_inputs(SynthesisForm, c),
        [player, cards, seed_used, timeline, util, overhead, files, status],
        api_name="synthesize",
    )

    async def warm(task_name: str, clip_path: str | None) -> Any:
        return await prepare_voice(engines, uploads, task_name, clip_path)

    async def pick_task(task_name: str) -> tuple[Any, Any, str]:
        return await on_task(engines, task_name)

    c["ref_audio"].change(warm, [c["task"], c["ref_audio"]], [status], api_name="prepare_voice")
    c["task"].change(pick_task, [c["task"]], [c["speaker"], c["language"], status], api_name="set_task")
    return saved
