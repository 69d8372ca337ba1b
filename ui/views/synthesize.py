"""Synthesize: one request, its audio streamed into our player as it is made (the player runs it over HTTP from the
click: `ui.live`), and the run's profile beside it, with what the listener heard. The fields shown follow the task."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import time
from typing import Any

import gradio as gr

from engine import EngineConfig, EngineError, RequestError, Task
from engine.config import EXECUTORS
from engine.request import TASKS
from ui.engines import Engines
from ui.heard import Heard
from ui.live import RunError
from ui.player import PLAYER_TEMPLATE, click_js, form_mirror_js, player_js
from ui.state import AppState
from ui.synthesis import Synthesis, SynthesisForm, run_synthesis
from ui.uploads import MAX_UPLOAD_MB, Uploads
from ui.views import saved_voices
from ui.views.form import form_inputs
from ui.views.render import capture_note, figures, request_cards


def engine_controls(config: EngineConfig) -> dict[str, gr.components.Component]:
    """Executor per stage and the main engine settings, by their `SynthesisForm` names, set as `config` has them."""
    with gr.Row():
        talker = gr.Radio(list(EXECUTORS), value=config.talker.executor, label="talker executor")
        code2wav = gr.Radio(list(EXECUTORS), value=config.code2wav.executor, label="code2wav executor")
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


def shown(synthesis: Synthesis, capture: bool) -> tuple[Any, ...]:
    """The view's outputs for a finished run (after `CLEARED`'s order): status, cards, seed, plots, files."""
    run = synthesis.run
    metrics = run.result.per_request[0]
    timeline, util, overhead = figures(run)
    status = f"Run {synthesis.record.id} on {synthesis.engine}. "
    status += (
        "Greedy: the same text gives the same audio."
        if synthesis.seed is None
        else (f"Seed {synthesis.seed}: set it above to repeat this run.")
    )
    if run.heard is not None:
        heard = run.heard
        status += (
            f" You heard the first sound {heard.first_sound_ms:.0f} ms after the click (the engine's first audio: "
            f"{metrics.ttfa_s * 1000:.0f} ms), with {heard.underruns} underrun(s)."
        )
    if capture:
        status += " " + capture_note(run.result)
    cards = request_cards(metrics, synthesis.seed, run.heard)
    return (status, cards, synthesis.seed, timeline, util, overhead, synthesis.record.files)


CLEARED = (None,) * 6  # cards, seed, timeline, util, overhead, files: a failed run leaves none of the last one's


async def collect(app: AppState, live: str, capture: bool) -> tuple[Any, ...]:
    """The page's player ran the request over HTTP (`ui.live`) and reports what it heard (JSON): the run's outputs,
    or its one message when it was refused or failed."""
    try:
        report = json.loads(live)
        if not isinstance(report, dict):
            raise ValueError("not an object")
        if report.get("replaced"):  # a later click's run took the player over: that run's event shows it
            return (gr.skip(),) * (1 + len(CLEARED))
        if "error" in report:
            return (str(report["error"])[:500], *CLEARED)
        heard = Heard.parse(report.get("heard"))
        synthesis = await app.live.result(str(report.get("run")))
    except (ValueError, KeyError):
        return ("That run is not on this server (any more): Generate again.", *CLEARED)
    except RunError as exc:
        return (str(exc), *CLEARED)
    synthesis.hear(heard)
    return shown(synthesis, capture)


async def synthesize(app: AppState, uploads: Uploads, form: SynthesisForm, live: str = "") -> tuple[Any, ...]:
    """The Generate event. From the page, its player has run the request already (`live`: what it heard). From a
    script (gradio_client: no player), the run happens here; a refused or failed one is a `gr.Error`."""
    if live:
        return await collect(app, live, form.torch_capture)
    try:
        synthesis = await run_synthesis(app, uploads, form)
    except RunError as exc:
        raise gr.Error(str(exc)) from exc
    return shown(synthesis, form.torch_capture)


async def prepare_voice(engines: Engines, uploads: Uploads, task: str, ref_audio: str | None) -> str:
    """Put an uploaded or recorded clip through the encoders at once, while the user still types: Generate then finds
    the voice cached. A clip that a request would be refused for says so now. Returns the note under the clip."""
    limits = clip_limits(engines)
    try:
        clip = uploads.read(ref_audio)
    except gr.Error as exc:
        return exc.message
    engine = engines.if_up(engines.config_for_task(task))
    if task != Task.VOICE_CLONE or clip is None or engine is None:
        return limits
    start = time.perf_counter()
    try:
        future = engine.prepare_voice(clip)
        await asyncio.wait([asyncio.wrap_future(future)])
        voice = future.result()
    except RequestError as exc:
        return f"This clip cannot be used: {exc}. {limits}"
    except (EngineError, concurrent.futures.CancelledError):
        return limits  # the engine closed meanwhile: Generate encodes the clip itself
    frames = voice.ref_codes.shape[0] if voice.ref_codes is not None else 0
    return (
        f"Clip ready: encoded in {(time.perf_counter() - start) * 1000:.0f} ms ({frames} frames of reference codes, "
        "now warming the decoder)."
    )


GUIDES = {
    Task.VOICE_CLONE: "**1.** Upload or record a clip of the voice · **2.** type what it says (or tick *x-vector "
    "only*) · **3.** type the text and press **Generate**.",
    Task.CUSTOM_VOICE: "**1.** Pick a speaker · **2.** type the text (an instruct is optional) · **3.** press "
    "**Generate**.",
    Task.VOICE_DESIGN: "**1.** Describe the voice in *instruct* · **2.** type the text · **3.** press **Generate**.",
}


def clip_limits(engines: Engines) -> str:
    return f"wav, flac or ogg; at most {engines.config.limits.max_ref_seconds:g} s and {MAX_UPLOAD_MB} MB."


def task_fields(engines: Engines, task: str) -> tuple[Any, ...]:
    """What the page shows for `task`: its three steps, the voice fields (voice clone), the speakers (custom voice),
    the instruct (custom voice, voice design), its languages."""
    task = Task(task) if task in TASKS else engines.info.task
    info = engines.serving_for(task).info
    return (
        GUIDES[task],
        gr.update(visible=task == Task.VOICE_CLONE),
        gr.update(
            choices=list(info.speakers),
            value=info.speakers[0] if info.speakers else None,
            visible=task == Task.CUSTOM_VOICE,
        ),
        gr.update(visible=task != Task.VOICE_CLONE),
        gr.update(choices=list(info.languages)),
    )


def build(blocks: gr.Blocks, app: AppState, uploads: Uploads, header: gr.Markdown) -> gr.Dropdown:
    """The view, in `blocks`; returns the saved-voice picker, which the app refreshes when a page loads. `header` (the
    serving engines as they are) is refreshed after every run."""
    engines = app.engines
    fields = [f.name for f in dataclasses.fields(SynthesisForm)]
    info = engines.info
    task = info.task
    c: dict[str, gr.components.Component] = {}  # the form's components, by field name
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            guide = gr.Markdown(GUIDES[task], elem_id="vx-guide")
            c["task"] = gr.Radio([str(t) for t in engines.tasks()], value=str(task), label="task")
            c["text"] = gr.Textbox("Hello from Voxtrace, a Qwen3-TTS serving engine.", label="text", lines=3)
            c["language"] = gr.Dropdown(list(info.languages), value="auto", label="language")
            with gr.Group(visible=task == Task.VOICE_CLONE) as voice:
                c["ref_audio"] = uploads.clip_input(sources=["upload", "microphone"], label="reference clip")
                clip_note = gr.Markdown(clip_limits(engines), elem_id="vx-clip-note")
                c["ref_text"] = gr.Textbox(label="transcript of the clip (voice clone)")
                c["x_vector_only"] = gr.Checkbox(False, label="x-vector only (no transcript needed)")
                c["saved_voice"] = saved = saved_voices.build(
                    app.voices, uploads, c["ref_audio"], c["ref_text"], c["x_vector_only"]
                )
            c["speaker"] = gr.Dropdown(
                list(info.speakers),
                value=(info.speakers or (None,))[0],
                label="speaker (custom voice)",
                visible=task == Task.CUSTOM_VOICE,
            )
            c["instruct"] = gr.Textbox(label="instruct (custom voice, voice design)", visible=task != Task.VOICE_CLONE)
            go = gr.Button("Generate", variant="primary", elem_id="vx-generate")
            player = gr.HTML(
                "",
                html_template=PLAYER_TEMPLATE,
                js_on_load=player_js(fields, info.sample_rate),
                elem_id="vx-player",
            )
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
                c["float_wav"] = gr.Checkbox(False, label="download the audio as 32-bit float WAV (else 16-bit PCM)")
        with gr.Column(scale=3, min_width=320):
            cards = gr.HTML("", elem_id="vx-cards")
            seed_used = gr.Number(None, label="seed used (set it above to repeat a run)", interactive=False)
            timeline = gr.Plot(label="timeline", elem_id="vx-timeline")
            util = gr.Plot(label="utilization")
            overhead = gr.Plot(label="overhead breakdown")
            files = gr.File(label="downloads: audio (16-bit WAV), Perfetto trace, metrics", file_count="multiple")
    live = gr.Textbox(visible=False)  # the page's player fills it with what it heard (`ui.live`, ui/js/player.js)
    inputs = form_inputs(SynthesisForm, c)
    blocks.load(None, inputs, None, js=form_mirror_js(fields))  # the player starts a run from these at the click
    for name, component in zip(fields, inputs, strict=True):
        component.change(None, [component], None, js=form_mirror_js([name]))

    async def run(*values: Any) -> tuple[Any, ...]:
        *form_values, heard = values
        out = await synthesize(app, uploads, SynthesisForm(*form_values), heard)
        return (*out, engines.summary())

    go.click(
        run,
        [*inputs, live],
        [player, cards, seed_used, timeline, util, overhead, files, header],
        js=click_js(fields),
        api_name="synthesize",
        show_progress="hidden",  # the player shows progress; overlays on every output would cost the click time
        trigger_mode="multiple",  # a click while a run plays starts the next one (the player has started it already)
    )

    async def warm(task_name: str, clip_path: str | None) -> str:
        return await prepare_voice(engines, uploads, task_name, clip_path)

    c["ref_audio"].change(warm, [c["task"], c["ref_audio"]], [clip_note], api_name="prepare_voice")
    c["task"].change(
        lambda name: task_fields(engines, name),
        [c["task"]],
        [guide, voice, c["speaker"], c["instruct"], c["language"]],
        api_name="set_task",
    )
    return saved
