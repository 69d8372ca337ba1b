"""Synthesize: one request, its audio streamed into our player as it is made, and the run's profile beside it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr

from engine import EngineConfig, RequestError, SpeechRequest
from engine.config import ChunkingConfig, ConfigError
from engine.model.sampling import SamplingError, SamplingParams
from engine.request import EngineError
from ui.lab import LabUnavailable
from ui.player import PLAYER_JS, PLAYER_TEMPLATE
from ui.profiled import run_requests
from ui.state import EngineManager, EngineUse, RunRecord, describe
from ui.uploads import Uploads
from ui.views import saved_voices
from ui.views.render import capture_note, figures, request_cards


@dataclasses.dataclass
class EngineSettings:
    """The engine settings the page exposes; the rest of the config stays as loaded."""

    talker_executor: str
    code2wav_executor: str
    max_num_seqs: int
    first_chunk_frames: int
    chunk_frames: int

    def apply(self, config: EngineConfig) -> EngineConfig:
        return dataclasses.replace(
            config,
            talker=dataclasses.replace(config.talker, executor=self.talker_executor, max_num_seqs=self.max_num_seqs),
            code2wav=dataclasses.replace(config.code2wav, executor=self.code2wav_executor),
            chunking=ChunkingConfig(self.first_chunk_frames, self.chunk_frames),
        )


def settings_of(config: EngineConfig) -> EngineSettings:
    return EngineSettings(
        config.talker.executor,
        config.code2wav.executor,
        config.talker.max_num_seqs,
        config.chunking.first_chunk_frames,
        config.chunking.chunk_frames,
    )


def engine_controls(config: EngineConfig) -> list[gr.components.Component]:
    """Executor per stage and the main engine settings (shared by the Synthesize and Compare views)."""
    s = settings_of(config)
    with gr.Row():
        talker = gr.Radio(["uni", "mp"], value=s.talker_executor, label="talker executor")
        code2wav = gr.Radio(["uni", "mp"], value=s.code2wav_executor, label="code2wav executor")
    with gr.Row():
        seqs = gr.Slider(1, 32, value=s.max_num_seqs, step=1, label="talker max_num_seqs")
        first = gr.Slider(1, 16, value=s.first_chunk_frames, step=1, label="first chunk (frames of 80 ms)")
        steady = gr.Slider(1, 32, value=s.chunk_frames, step=1, label="chunk (frames)")
    return [talker, code2wav, seqs, first, steady]


def build_request(
    manager: EngineManager,
    uploads: Uploads,
    task: str,
    text: str,
    language: str,
    ref_audio: str | None,
    ref_text: str,
    x_vector_only: bool,
    saved_voice: str | None,
    speaker: str | None,
    instruct: str,
    do_sample: bool,
    temperature: float,
    top_k: int,
    top_p: float,
    max_new_tokens: int,
    seed: float | None,
) -> SpeechRequest:
    clip, transcript = uploads.read(ref_audio), ref_text or None
    voice = saved_voices.saved_voice(manager, saved_voice) if task == "voice_clone" and clip is None else None
    if voice is not None:
        clip, transcript, x_vector_only = voice.clip, voice.ref_text, voice.x_vector_only
    try:
        sampling = SamplingParams(
            do_sample=do_sample,
            temperature=temperature,
            top_k=int(top_k),
            top_p=top_p,
            subtalker_dosample=do_sample,
            subtalker_temperature=temperature,
            subtalker_top_k=int(top_k),
            subtalker_top_p=top_p,
        )
    except SamplingError as exc:
        raise RequestError(exc.field, exc.message) from exc
    return SpeechRequest(
        text=text,
        task=task,
        language=language or "auto",
        speaker=(speaker or None) if task == "custom_voice" else None,
        instruct=(instruct or None) if task != "voice_clone" else None,
        ref_audio=clip if task == "voice_clone" else None,
        ref_text=transcript if task == "voice_clone" and not x_vector_only else None,
        x_vector_only=x_vector_only,
        sampling=sampling,
        seed=None if seed is None or seed < 0 else int(seed),
        max_new_tokens=int(max_new_tokens),  # on the request, so one past the engine's limit is refused, not capped
    )


async def synthesize(manager: EngineManager, uploads: Uploads, *args: Any) -> AsyncIterator[tuple[Any, ...]]:
    """Outputs: player stream URL, metric cards, seed used, timeline, utilization, overhead, downloads, status.
    The page's settings run on the serving engine when they are its own, else on the lab engine (`ui.lab`)."""
    *request_args, talker, code2wav, seqs, first, steady, torch_capture = args
    task = request_args[0]
    # cards, seed, plots, files: the last run's go. None, not "": the later yields then reach a client as "replace"
    # diffs, which gradio_client <= 2.5 applies correctly even when it lost this yield (it can register a fast event
    # after its first message arrived); an "append" onto "" would break it.
    cleared = (None,) * 6
    try:
        settings = EngineSettings(talker, code2wav, int(seqs), int(first), int(steady))
        config = manager.config_for_task(task, settings.apply(manager.config))
    except ConfigError as exc:
        raise gr.Error(f"engine settings: {exc}") from exc
    try:
        request = build_request(manager, uploads, *request_args)
    except RequestError as exc:
        raise gr.Error(str(exc)) from exc
    if manager.engine_if_up(config) is None:
        yield (None, *cleared, f"Starting a lab engine for these settings: {describe(config)} …")
    try:
        async with manager.engine_for(config) as use:
            async for out in _run(manager, use, request, bool(torch_capture), cleared):
                yield out
    except LabUnavailable as exc:
        raise gr.Error(str(exc)) from exc


async def _run(
    manager: EngineManager, use: EngineUse, request: SpeechRequest, torch_capture: bool, cleared: tuple[None, ...]
) -> AsyncIterator[tuple[Any, ...]]:
    stream = manager.streams.open(use.engine.model.sample_rate)
    yield (stream.url, *cleared, f"Generating on {use.label} …")
    run_id, run_dir = manager.new_run_dir("synthesize")
    try:
        outcome = await run_requests(
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
    if outcome.errors or not outcome.requests:  # the runner reports a failed request instead of raising
        raise gr.Error(outcome.errors.get(request.request_id, "the request produced no audio"))
    seed = outcome.seeds[request.request_id]
    metrics = outcome.requests[0]
    record = manager.add_run(
        RunRecord(
            run_id,
            "synthesize",
            request.text[:60],
            f"{use.role}: {describe(use.config)}",
            time.time(),
            [outcome],
            [str(p) for p in outcome.files.values()],
            {
                "task": request.task,
                "seed": seed,
                "ttfa_s": metrics.ttfa_s,
                "rtf": metrics.rtf,
                "audio_s": metrics.audio_s,
            },
        )
    )
    timeline, util, overhead = figures(outcome)
    status = f"Run {record.id} on {use.label}. Seed {seed}: set it above to repeat this run."
    if torch_capture:
        status += " " + capture_note(outcome)
    yield (stream.url, request_cards(metrics, seed), seed, timeline, util, overhead, record.files, status)


async def prepare_voice(manager: EngineManager, uploads: Uploads, task: str, ref_audio: str | None) -> Any:
    """Put an uploaded or recorded clip through the encoders at once, while the user still types: Generate then finds
    the voice cached (on the engine that is up for the task: the serving one, or a lab engine already built). A clip
    that a request would be refused for says so now. Returns the status line."""
    clip = uploads.read(ref_audio)
    engine = manager.engine_if_up(manager.config_for_task(task))
    if task != "voice_clone" or clip is None or engine is None:
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


async def on_task(manager: EngineManager, task: str) -> tuple[Any, Any, str]:
    """Offer the task's speakers and languages. On the tiny model another task is another checkpoint: its lab
    engine is built now, so Generate finds it up."""
    config = manager.config_for_task(task)
    try:
        async with manager.engine_for(config) as use:
            model = use.engine.model
    except LabUnavailable as exc:
        gr.Warning(str(exc))
        return gr.skip(), gr.skip(), f"Task {task} needs a lab engine: {exc}"
    speakers = model.speakers
    return (
        gr.update(choices=speakers, value=speakers[0] if speakers else None),
        gr.update(choices=model.languages),
        f"Task {task} runs on {use.label}.",
    )


def build(manager: EngineManager, uploads: Uploads) -> gr.Dropdown:
    """The view; returns the saved-voice picker, which the app refreshes when a page loads."""
    model = manager.serving.model
    with gr.Row():
        with gr.Column(scale=2):
            task = gr.Radio(manager.tasks(), value=model.task, label="task")
            text = gr.Textbox("Hello from Voxtrace, a Qwen3-TTS serving engine.", label="text", lines=3)
            language = gr.Dropdown(model.languages, value="auto", label="language")
            with gr.Accordion("voice", open=True):
                ref_audio = uploads.clip_input(sources=["upload", "microphone"], label="reference clip")
                ref_text = gr.Textbox(label="transcript of the clip (voice clone)")
                x_vector_only = gr.Checkbox(False, label="x-vector only (no transcript needed)")
                saved = saved_voices.build(manager, uploads, ref_audio, ref_text, x_vector_only)
                speaker = gr.Dropdown(
                    model.speakers, value=(model.speakers or [None])[0], label="speaker (custom voice)"
                )
                instruct = gr.Textbox(label="instruct (custom voice, voice design)")
            with gr.Accordion("sampling", open=False):
                do_sample = gr.Checkbox(True, label="sample (off: greedy)")
                with gr.Row():
                    temperature = gr.Slider(0.1, 2.0, value=0.9, step=0.05, label="temperature")
                    top_k = gr.Slider(0, 200, value=50, step=1, label="top_k")
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top_p")
                with gr.Row():
                    max_new_tokens = gr.Number(200, precision=0, label="max frames (80 ms each)")
                    seed = gr.Number(-1, precision=0, label="seed (-1: pick one and show it)")
            with gr.Accordion("engine (other settings than the server's run on a lab engine)", open=False):
                engine_inputs = engine_controls(manager.config)
                torch_capture = gr.Checkbox(False, label="torch.profiler capture (TensorBoard folder)")
            go = gr.Button("Generate", variant="primary", elem_id="vx-generate")
        with gr.Column(scale=3):
            player = gr.HTML("", html_template=PLAYER_TEMPLATE, js_on_load=PLAYER_JS, elem_id="vx-player")
            status = gr.Markdown(f"Serving engine: {describe(manager.config)}", elem_id="vx-status")
            cards = gr.HTML("", elem_id="vx-cards")
            seed_used = gr.Number(label="seed used", interactive=False)
            timeline = gr.Plot(label="timeline", elem_id="vx-timeline")
            util = gr.Plot(label="utilization")
            overhead = gr.Plot(label="overhead breakdown")
            files = gr.File(label="downloads: audio, Perfetto trace, metrics", file_count="multiple")
    request_inputs = [task, text, language, ref_audio, ref_text, x_vector_only, saved, speaker, instruct]
    request_inputs += [do_sample, temperature, top_k, top_p, max_new_tokens, seed]

    async def run(*args: Any) -> AsyncIterator[tuple[Any, ...]]:
        async for out in synthesize(manager, uploads, *args):
            yield out

    go.click(
        run,
        request_inputs + engine_inputs + [torch_capture],
        [player, cards, seed_used, timeline, util, overhead, files, status],
        api_name="synthesize",
    )

    async def warm(task_name: str, clip_path: str | None) -> Any:
        return await prepare_voice(manager, uploads, task_name, clip_path)

    async def pick_task(task_name: str) -> tuple[Any, Any, str]:
        return await on_task(manager, task_name)

    ref_audio.change(warm, [task, ref_audio], [status], api_name="prepare_voice")
    task.change(pick_task, [task], [speaker, language, status], api_name="set_task")
    return saved
