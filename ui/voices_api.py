"""Saved voices over HTTP: `POST /v1/voices` (a clip and its transcript, or x-vector only: encoded once, at once),
`GET /v1/voices`, `DELETE /v1/voices/{id}`. A voice's id is its name in the server's library (`ui.voices`), the same
store the app's saved-voice picker shows; `POST /v1/audio/speech` takes it as `voice` for a voice clone (see
`ui.api_schema.to_speech_request`), so a client sends its clip once, not with every request.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from engine import Engine, RequestError
from ui.api_schema import ApiError, Text, decode_clip
from ui.voices import SavedVoice, VoiceError, VoiceLibrary


class VoiceBody(BaseModel):
    """The body of POST /v1/voices. `audio` is the clip as base64 or a data URL (as `ref_audio` in a speech request);
    `ref_text` is what the clip says, needed unless `x_vector_only`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Text
    audio: Text
    ref_text: Text | None = None
    x_vector_only: bool = False


def voice_object(voice: SavedVoice) -> dict[str, Any]:
    return {"id": voice.name, "object": "voice", "ref_text": voice.ref_text, "x_vector_only": voice.x_vector_only}


class VoicesApi:
    """The voice routes over the server's library; clips are checked by `engine` (the serving engine of voice clone)
    before they are saved."""

    def __init__(self, library: VoiceLibrary, engine: Engine) -> None:
        self.library, self.engine = library, engine
        self.router = APIRouter(prefix="/v1")
        self.router.add_api_route("/voices", self.create, methods=["POST"], status_code=201)
        self.router.add_api_route("/voices", self.list, methods=["GET"])
        self.router.add_api_route("/voices/{voice_id}", self.delete, methods=["DELETE"])

    async def create(self, body: VoiceBody) -> dict[str, Any]:
        clip = decode_clip(body.audio, "audio")
        if not body.x_vector_only and not (body.ref_text or "").strip():
            raise ApiError(400, "ref_text: what the clip says is needed, unless x_vector_only is true", "ref_text")
        limit = self.engine.config.limits.max_ref_text_chars
        if body.ref_text is not None and len(body.ref_text) > limit:
            raise ApiError(400, f"ref_text: has {len(body.ref_text)} characters; the limit is {limit}", "ref_text")
        try:  # encoded now, once: a speech request with this voice finds its x-vector and codes cached
            await asyncio.wrap_future(self.engine.prepare_voice(clip, body.x_vector_only))
        except RequestError as exc:
            raise ApiError(400, f"audio: {str(exc).split(': ', 1)[-1]}", "audio") from exc
        voice = SavedVoice(body.name, clip, None if body.x_vector_only else body.ref_text, body.x_vector_only)
        try:
            name = self.library.save(voice)
        except VoiceError as exc:
            taken = "already saved" in str(exc)
            raise ApiError(409 if taken else 400, str(exc), "audio" if "clip" in str(exc) else "name") from exc
        saved = self.library.get(name)
        assert saved is not None  # just saved; the library removes no voice behind a save
        return voice_object(saved)

    async def list(self) -> dict[str, Any]:
        voices = [v for name in self.library.names() if (v := self.library.get(name)) is not None]
        return {"object": "list", "data": [voice_object(v) for v in voices]}

    async def delete(self, voice_id: str) -> dict[str, Any]:
        try:
            self.library.delete(voice_id)
        except VoiceError as exc:
            raise ApiError(404, f"voice: no saved voice has the id {voice_id!r}", "voice", "not_found") from exc
        return {"id": voice_id, "object": "voice", "deleted": True}
