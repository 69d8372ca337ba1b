"""A Synthesize run, start to end, without the page around it: the form (`SynthesisForm`, the view's inputs), the
request built from it, the run on the engine the form's settings ask for, and the finished run as the page shows it.
The view (`ui.views.synthesize`) and the player's HTTP route (`ui.live`) both start runs here."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
import typing
from typing import Any

import gradio as gr

from engine import AudioChunk, EngineConfig, RequestError, SamplingError, SamplingParams, SpeechRequest, Task
from engine.config import ChunkingConfig, ConfigError
from ui.describe import describe
from ui.heard import Heard
from ui.lab import LabUnavailable
from ui.live import Feed, RunError
from ui.profiled import ProfiledRun, run_requests
from ui.run_store import RunRecord
from ui.state import AppState
from ui.uploads import Uploads
from ui.views import saved_voices
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
    float_wav: bool  # the download as 32-bit float samples, not 16-bit PCM

    def engine_config(self, base: EngineConfig) -> EngineConfig:
        """`base` with the page's engine settings; the rest of the config stays as loaded."""
        return dataclasses.replace(
            base,
            talker=dataclasses.replace(base.talker, executor=self.talker_executor, max_num_seqs=int(self.max_num_seqs)),
            code2wav=dataclasses.replace(base.code2wav, executor=self.code2wav_executor),
            chunking=ChunkingConfig(int(self.first_chunk_frames), int(self.chunk_frames)),
        )


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


@dataclasses.dataclass
class Synthesis:
    """One finished Synthesize run as the page shows it: the stored record, its profile and the engine it ran on."""

    record: RunRecord
    run: ProfiledRun
    seed: int | None
    engine: str  # which engine ran it, in words

    def hear(self, heard: Heard) -> None:
        """Add what the page's player heard to the run: its metrics file, the runs table and the profile."""
        self.run.heard = heard
        metrics = self.run.files.get("metrics")
        if metrics is not None and metrics.exists():
            data = json.loads(metrics.read_text())
            data["heard"] = heard.to_dict()
            metrics.write_text(json.dumps(data, indent=1))
        self.record.summary["first_sound_ms"] = round(heard.first_sound_ms)
        self.record.summary["underruns_heard"] = heard.underruns


def _refuse(exc: Exception) -> RunError:
    """A validation error of any layer as one message for the page (no type names, no reprs)."""
    message = exc.message if isinstance(exc, gr.Error) else str(exc)
    return RunError(f"engine settings: {message}" if isinstance(exc, ConfigError) else message)


async def run_synthesis(app: AppState, uploads: Uploads, form: SynthesisForm, feed: Feed | None = None) -> Synthesis:
    """One Synthesize run, start to end; `RunError` when it is refused (a bad field, no engine for these settings)
    or the engine fails it. Its chunks go to `feed` (the page's player) as they come. The page's
    settings run on a serving engine when they are one's own, else on the lab engine (`ui.lab`)."""
    engines = app.engines
    try:
        config = engines.config_for_task(form.task, form.engine_config(engines.config))
        request = build_request(app.voices, uploads, form)
    except (ConfigError, RequestError, gr.Error) as exc:
        raise _refuse(exc) from exc
    try:
        async with engines.use(config) as use:
            run_id, run_dir = app.runs.new_dir("synthesize")

            def on_chunk(chunk: AudioChunk) -> None:
                if feed is not None:  # the player's response starts with the first chunk: a refusal is still a 400
                    feed.start(use.engine.info.sample_rate, use.label)
                    feed.push(chunk.samples)
                    if chunk.is_last:
                        feed.end()

            try:
                run = await run_requests(
                    use.engine,
                    [request],
                    run_dir,
                    label=run_id,
                    on_chunk=on_chunk,
                    torch_capture=form.torch_capture,
                    wav_subtype="FLOAT" if form.float_wav else "PCM_16",
                )
            finally:
                if feed is not None:
                    feed.close()
    except LabUnavailable as exc:
        raise RunError(str(exc)) from exc
    result = run.result
    if result.errors or not result.per_request:  # the runner reports a failed request instead of raising
        raise RunError(result.errors.get(request.request_id, "the request produced no audio"))
    seed = run.seeds[request.request_id]
    metrics = result.per_request[0]
    summary = {"task": request.task, "seed": seed, "ttfa_ms": round(metrics.ttfa_s * 1000), "rtf": metrics.rtf}
    record = RunRecord(
        run_id,
        "synthesize",
        request.text[:60],
        f"{use.role}: {describe(use.config)}",
        time.time(),
        [run],
        [str(p) for p in run.files.values()],
        summary | {"audio_s": metrics.audio_s},
    )
    return Synthesis(app.runs.add(record), run, seed, use.label)


@functools.cache
def _form_fields() -> dict[str, Any]:
    """The form's fields and their types (resolved once: a run posts its form each time)."""
    return typing.get_type_hints(SynthesisForm)


def form_from_json(raw: dict[str, Any]) -> SynthesisForm:
    """The form as the page's player posts it (`ui.live`): every field present with its type, else `RunError` naming
    it. A clip is the upload's path, as Gradio's audio component holds it ({"path": ...})."""
    values = {}
    for name, kind in _form_fields().items():
        value = raw.get(name)
        if name == "ref_audio" and isinstance(value, dict):
            value = value.get("path")
        if value is None:  # a field the page hides (not the task's) comes as null
            if type(None) in typing.get_args(kind):
                values[name] = None
                continue
            value = "" if kind is str else value
        if kind is bool:
            ok = isinstance(value, bool)
        elif float in (kind, *typing.get_args(kind)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise RunError(f"{name}: missing or of the wrong type")
        values[name] = value
    return SynthesisForm(**values)
