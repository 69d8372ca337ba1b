"""The request side of the speech API: the JSON body (OpenAI's fields plus the Qwen3-TTS ones), its mapping onto
`engine.SpeechRequest`, and errors in OpenAI's JSON shape.

The server never reads a file or fetches a URL for a request: `ref_audio` is the clip itself, as base64 or a data URL.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from engine import (
    MAX_TOP_K,
    REPETITION_PENALTY_RANGE,
    TEMPERATURE_RANGE,
    EngineBusy,
    ModelInfo,
    RequestError,
    SamplingError,
    SamplingParams,
    SpeechRequest,
    StageUnavailable,
    Task,
)
from engine.config import LimitsConfig
from ui.audio_formats import FORMATS, STREAM_FORMATS
from ui.voices import SavedVoice

ENGINE_FIELD_TO_PARAM = {"task": "task_type"}  # the engine's field names that differ from the API's
RETRY_AFTER_S = 1  # busy, or a stage's worker being replaced: seconds, not minutes
DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*),(?P<data>.*)$", re.DOTALL)
URL_LIKE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:(//|/)")  # http://, file:/, s3://, ...
# characters no base64 holds: "." and "\\" (a file name, a Windows path) or a leading "./", "~"; a leading "/" is a
# path only when too short to be a clip (base64 of raw MP3 starts with "//")
PATH_LIKE = re.compile(r"^(\./|\.\./|~|[a-zA-Z]:[\\/])|[.\\]")
SHORTEST_CLIP_BASE64 = 512


class ApiError(Exception):
    """An error answered as OpenAI's JSON shape: {"error": {"message", "type", "param", "code"}}. `reason` is for the
    server's log only (why the engine failed), never sent."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}
        self.reason = reason

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def for_log(self) -> str:
        return f"{self.message} ({self.reason})" if self.reason else self.message

    def content(self) -> bytes:
        """The body as JSON, ASCII-escaped, so no client text in it (a lone surrogate) can break its encoding."""
        return json.dumps(self.body()).encode()


def busy_error(message: str) -> ApiError:
    return ApiError(429, message, code="busy", kind="server_busy", headers={"Retry-After": str(RETRY_AFTER_S)})


def unavailable_error(stage: str) -> ApiError:
    message = f"the {stage} stage has no live worker right now (it is being replaced); try again shortly"
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    return ApiError(503, message, code="stage_unavailable", kind="server_error", headers=headers)


def engine_error(exc: Exception) -> ApiError:
    """The engine's exceptions as HTTP answers: bad input 400 naming the field, busy 429, a stage down 503, a failure
    500. Only the first line of the engine's text is used (never a worker's traceback), and a failure's text goes to
    the log alone: the client gets a short message and the request id to quote."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, RequestError):
        param = ENGINE_FIELD_TO_PARAM.get(exc.field, exc.field)
        message = reason.split(": ", 1)[-1]
        return ApiError(400, f"{param}: {message}", param=param, code="invalid_value")
    if isinstance(exc, EngineBusy):
        return busy_error("the engine is busy; try again shortly")
    if isinstance(exc, StageUnavailable):
        return unavailable_error(exc.stage)
    return ApiError(500, "synthesis failed", code="engine_error", kind="server_error", reason=reason)


def _unicode(text: str) -> str:
    """Text that can be encoded: JSON's \\ud800 escapes decode to lone surrogates, which no tokenizer takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PydanticCustomError(
            "invalid_unicode", "is not valid Unicode (a lone surrogate at character {at})", {"at": exc.start}
        ) from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]


class VoiceRef(BaseModel):
    """OpenAI's custom-voice object, {"id": ...}; its id is used as the speaker name."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: Text


class SpeechBody(BaseModel):
    """The body of POST /v1/audio/speech: OpenAI's fields, then the Qwen3-TTS ones. Unknown fields are refused, so a
    misspelt option is an error rather than silently ignored; types are strict (`true` is not a seed, 1e9 is not a
    frame count) and numbers finite and in range. Text lengths are the engine's limits, checked before any work."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: Text | None = None
    input: Text
    voice: Text | VoiceRef | None = None  # custom_voice: the speaker; voice_clone: a saved voice (`ui.voices_api`)
    response_format: Text = "wav"
    speed: float = 1.0
    stream: bool = False
    stream_format: Text = "audio"
    task_type: Text | None = None  # None: the loaded checkpoint's task
    language: Text = "auto"
    instructions: Text | None = None
    ref_audio: Text | None = None  # base64 audio file bytes, or a data URL
    ref_text: Text | None = None
    x_vector_only_mode: bool = False
    max_new_tokens: int | None = Field(None, ge=1)  # at most the engine's limit (the engine says which)
    seed: int | None = Field(None, ge=0, lt=2**63)
    temperature: float | None = Field(None, ge=0, le=TEMPERATURE_RANGE[1])  # 0: greedy (talker and code predictor)
    top_k: int | None = Field(None, ge=0, le=MAX_TOP_K)
    top_p: float | None = Field(None, gt=0, le=1)
    repetition_penalty: float | None = Field(None, ge=REPETITION_PENALTY_RANGE[0], le=REPETITION_PENALTY_RANGE[1])
    non_streaming_mode: bool | None = None


def decode_clip(value: str, param: str = "ref_audio") -> bytes:
    """A clip given inline (the body's field `param`), as base64 or a base64 data URL. URLs and paths are refused: the
    server reads neither."""
    text = value.strip()
    if URL_LIKE.match(text):
        raise ApiError(400, f"{param}: URLs are not fetched; send the clip as base64 or a data URL", param)
    match = DATA_URL.match(text)
    if match:
        if "base64" not in match["params"].split(";"):
            raise ApiError(400, f"{param}: a data URL must be base64-encoded (data:audio/wav;base64,...)", param)
        mime = match["mime"] or ""
        if mime and not (mime.startswith("audio/") or mime == "application/octet-stream"):
            raise ApiError(400, f"{param}: the data URL holds {mime!r}, not audio", param)
        text = match["data"]
    elif PATH_LIKE.search(text) or (text.startswith("/") and len(text) < SHORTEST_CLIP_BASE64):
        raise ApiError(400, f"{param}: file paths are not read; send the clip as base64 or a data URL", param)
    data = re.sub(r"\s+", "", text)
    altchars = b"-_" if "-" in data or "_" in data else None  # the URL-safe alphabet
    try:
        decoded = base64.b64decode(data + "=" * (-len(data) % 4), altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"{param}: not valid base64 ({exc})", param) from exc
    if not decoded:
        raise ApiError(400, f"{param}: empty", param)
    return decoded


def to_speech_request(
    body: SpeechBody,
    info: ModelInfo,
    limits: LimitsConfig,
    request_id: str,
    saved_voice: Callable[[str], SavedVoice | None] = lambda _: None,
) -> SpeechRequest:
    """The body as an engine request for the served model (`info`); for a voice clone, `voice` names a saved voice
    (`saved_voice` looks it up: its clip, transcript and mode stand for ref_audio, ref_text and x_vector_only_mode).
    Text lengths are checked here against the engine's `limits`, before the clip is decoded; what the engine checks
    against the checkpoint (language, speaker, the clip) is left to it: its `RequestError` names the field.
    `task_type` takes our task names and the checkpoint-type names other Qwen3-TTS servers use (Base / CustomVoice /
    VoiceDesign)."""
    for param, text, limit in (
        ("input", body.input, limits.max_text_chars),
        ("instructions", body.instructions, limits.max_instruct_chars),
        ("ref_text", body.ref_text, limits.max_ref_text_chars),
    ):
        if text is not None and len(text) > limit:
            raise ApiError(400, f"{param}: has {len(text)} characters; the limit is {limit}", param, "too_long")
    if body.response_format not in FORMATS:
        raise ApiError(
            400,
            f"response_format: {body.response_format!r} is not supported; use one of {', '.join(FORMATS)}",
            "response_format",
            "unsupported_value",
        )
    if body.speed != 1.0:
        raise ApiError(400, "speed: only 1.0 is supported", "speed", "unsupported_value")
    if body.stream_format not in ("audio", "sse"):
        raise ApiError(400, "stream_format: use 'audio' or 'sse'", "stream_format", "invalid_value")
    streaming = body.stream or body.stream_format == "sse"
    if streaming and body.response_format not in STREAM_FORMATS:
        raise ApiError(
            400,
            f"response_format: a stream is sent as {' or '.join(STREAM_FORMATS)}, not {body.response_format!r}",
            "response_format",
            "unsupported_value",
        )
    task = None
    if body.task_type is not None:
        try:
            task = Task.named(body.task_type)
        except ValueError as exc:
            raise ApiError(400, f"task_type: {exc}", "task_type", "invalid_value") from None
    voice = body.voice.id if isinstance(body.voice, VoiceRef) else body.voice
    asked = task or info.task
    clip, ref_text, x_vector_only = None, body.ref_text, body.x_vector_only_mode
    if voice and asked is Task.VOICE_CLONE:
        if body.ref_audio is not None:
            raise ApiError(400, "voice: give a saved voice or ref_audio, not both", "voice", "invalid_value")
        saved = saved_voice(voice)
        if saved is None:
            raise ApiError(
                400, f"voice: {voice!r} is not a saved voice here (GET /v1/voices lists them)", "voice", "invalid_value"
            )
        clip, ref_text, x_vector_only, voice = saved.clip, saved.ref_text, saved.x_vector_only, None
    elif body.ref_audio is not None:
        clip = decode_clip(body.ref_audio)
    if voice and asked is not Task.CUSTOM_VOICE:
        source = "ref_audio" if asked is Task.VOICE_CLONE else "instructions"
        raise ApiError(
            400,
            f"voice: {voice!r} is not a voice here; {asked} takes its voice from {source}, so leave "
            "voice out (named speakers are custom_voice's)",
            "voice",
            "invalid_value",
        )
    return SpeechRequest(
        text=body.input,
        task=task,
        language=body.language,
        speaker=voice or None,
        instruct=body.instructions,
        ref_audio=clip,
        ref_text=ref_text,
        x_vector_only=x_vector_only,
        non_streaming_mode=body.non_streaming_mode,
        sampling=sampling_params(body, info),
        seed=body.seed,
        max_new_tokens=body.max_new_tokens,
        request_id=request_id,
    )


def sampling_params(body: SpeechBody, info: ModelInfo) -> SamplingParams | None:
    """The checkpoint's sampling settings with the body's changes; None when it changes none. Temperature 0 is
    greedy decoding (talker and code predictor), where the other settings no longer matter."""
    tuned = {k: getattr(body, k) for k in ("temperature", "top_k", "top_p", "repetition_penalty")}
    tuned = {k: v for k, v in tuned.items() if v is not None}
    if not tuned:
        return None
    if tuned.get("temperature") == 0:
        del tuned["temperature"]
        tuned.update(do_sample=False, subtalker_dosample=False)
    try:
        return dataclasses.replace(info.sampling_defaults, **tuned)
    except SamplingError as exc:  # inside the API's ranges, outside the engine's (a temperature of 1e-4)
        raise ApiError(400, str(exc), exc.field, "invalid_value") from None
