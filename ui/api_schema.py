"""The request side of the speech API: the JSON body (OpenAI's fields plus the Qwen3-TTS ones), its mapping onto
`engine.SpeechRequest`, and errors in OpenAI's JSON shape.

The server never reads a file or fetches a URL for a request: `ref_audio` is the clip itself, as base64 or a data URL.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine import EngineBusy, RequestError, SpeechRequest
from engine.model.qwen3_tts import Qwen3TTS
from ui.audio_formats import FORMATS, STREAM_FORMATS

# task_type: ours, and the checkpoint-type names other Qwen3-TTS servers use (Base / CustomVoice / VoiceDesign)
TASK_ALIASES = {
    "voiceclone": "voice_clone",
    "base": "voice_clone",
    "customvoice": "custom_voice",
    "voicedesign": "voice_design",
}
ENGINE_FIELD_TO_PARAM = {"task": "task_type", "sampling": "temperature"}  # engine names that differ from the API's
DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*),(?P<data>.*)$", re.DOTALL)
URL_LIKE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:(//|/)")  # http://, file:/, s3://, ...
# characters no base64 holds: "." and "\\" (a file name, a Windows path) or a leading "./", "~"; a leading "/" is a
# path only when too short to be a clip (base64 of raw MP3 starts with "//")
PATH_LIKE = re.compile(r"^(\./|\.\./|~|[a-zA-Z]:[\\/])|[.\\]")
SHORTEST_CLIP_BASE64 = 512


class ApiError(Exception):
    """An error answered as OpenAI's JSON shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def busy_error(message: str) -> ApiError:
    return ApiError(429, message, code="busy", kind="server_busy", headers={"Retry-After": "1"})


def engine_error(exc: Exception) -> ApiError:
    """The engine's exceptions as HTTP answers: bad input 400 naming the field, busy 429, failures 500."""
    if isinstance(exc, RequestError):
        param = ENGINE_FIELD_TO_PARAM.get(exc.field, exc.field)
        message = str(exc).split(": ", 1)[-1]
        return ApiError(400, f"{param}: {message}", param=param, code="invalid_value")
    if isinstance(exc, EngineBusy):
        return busy_error(f"the engine is busy, try again shortly ({exc})")
    return ApiError(500, f"synthesis failed: {exc}", code="engine_error", kind="server_error")


class VoiceRef(BaseModel):
    """OpenAI's custom-voice object, {"id": ...}; its id is used as the speaker name."""

    id: str


class SpeechBody(BaseModel):
    """The body of POST /v1/audio/speech: OpenAI's fields, then the Qwen3-TTS ones. Unknown fields are refused, so a
    misspelt option is an error rather than silently ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    input: str
    voice: str | VoiceRef | None = None  # custom_voice: the speaker; ignored by voice_clone and voice_design
    response_format: str = "wav"
    speed: float = 1.0
    stream: bool = False
    stream_format: str = "audio"
    task_type: str | None = None  # None: the loaded checkpoint's task
    language: str = "auto"
    instructions: str | None = None
    ref_audio: str | None = None  # base64 audio file bytes, or a data URL
    ref_text: str | None = None
    x_vector_only_mode: bool = False
    max_new_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    temperature: float | None = Field(None, ge=0)  # 0: greedy (talker and code predictor)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    non_streaming_mode: bool | None = None


def decode_ref_audio(value: str) -> bytes:
    """A clip given inline, as base64 or a base64 data URL. URLs and paths are refused: the server reads neither."""
    text = value.strip()
    if URL_LIKE.match(text):
        raise ApiError(400, "ref_audio: URLs are not fetched; send the clip as base64 or a data URL", "ref_audio")
    match = DATA_URL.match(text)
    if match:
        if "base64" not in match["params"].split(";"):
            raise ApiError(400, "ref_audio: a data URL must be base64-encoded (data:audio/wav;base64,...)", "ref_audio")
        mime = match["mime"] or ""
        if mime and not (mime.startswith("audio/") or mime == "application/octet-stream"):
            raise ApiError(400, f"ref_audio: the data URL holds {mime!r}, not audio", "ref_audio")
        text = match["data"]
    elif PATH_LIKE.search(text) or (text.startswith("/") and len(text) < SHORTEST_CLIP_BASE64):
        raise ApiError(400, "ref_audio: file paths are not read; send the clip as base64 or a data URL", "ref_audio")
    data = re.sub(r"\s+", "", text)
    altchars = b"-_" if "-" in data or "_" in data else None  # the URL-safe alphabet
    try:
        decoded = base64.b64decode(data + "=" * (-len(data) % 4), altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"ref_audio: not valid base64 ({exc})", "ref_audio") from exc
    if not decoded:
        raise ApiError(400, "ref_audio: empty", "ref_audio")
    return decoded


def to_speech_request(body: SpeechBody, model: Qwen3TTS) -> SpeechRequest:
    """The body as an engine request. Fields the engine checks against the checkpoint (language, speaker, lengths,
    the clip) are left to it: its `RequestError` names the field."""
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
        task = TASK_ALIASES.get(body.task_type.lower().replace("_", "").replace("-", ""))
        if task is None:
            raise ApiError(
                400,
                f"task_type: {body.task_type!r} is not one of voice_clone, custom_voice, voice_design",
                "task_type",
                "invalid_value",
            )
    voice = body.voice.id if isinstance(body.voice, VoiceRef) else body.voice
    sampling = None
    tuned = {k: getattr(body, k) for k in ("temperature", "top_k", "top_p", "repetition_penalty")}
    tuned = {k: v for k, v in tuned.items() if v is not None}
    if tuned:
        if tuned.get("temperature") == 0:  # greedy: sampling settings no longer matter
            del tuned["temperature"]
            tuned.update(do_sample=False, subtalker_dosample=False)
        sampling = dataclasses.replace(model.sampling_defaults, **tuned)
    return SpeechRequest(
        text=body.input,
        task=task,
        language=body.language,
        speaker=voice if (task or model.task) == "custom_voice" else None,
        instruct=body.instructions,
        ref_audio=decode_ref_audio(body.ref_audio) if body.ref_audio is not None else None,
        ref_text=body.ref_text,
        x_vector_only=body.x_vector_only_mode,
        non_streaming_mode=body.non_streaming_mode,
        sampling=sampling,
        seed=body.seed,
        max_new_tokens=body.max_new_tokens,
    )
