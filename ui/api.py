"""The OpenAI-compatible speech API: `POST /v1/audio/speech` and `GET /v1/models`, over one `engine.Engine`.

A body (`ui.api_schema.SpeechBody`) is mapped to an `engine.SpeechRequest` and admitted only while every stage has a
live worker (else 503 naming the stage) and fewer than `ApiLimits.max_in_flight` requests run (past that: 429 at once,
never an unbounded queue). The first audio chunk is awaited before any status is sent, so a request the engine refuses
gets a 4xx naming the field, and a stream that does start carries its seed and time to first audio in its headers. A
stream the engine fails midway is cut (the client sees an unfinished response; SSE gets an `error` event). A client
that goes away mid-request cancels it, which frees its slots in every stage. Each request that ends in an error leaves
one line in the log, with its id (the `x-voxtrace-request-id` header).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from engine import AudioChunk, Engine, EngineError, RequestError, Task
from ui.api_schema import ApiError, SpeechBody, busy_error, engine_error, to_speech_request, unavailable_error
from ui.audio_formats import CONTENT_TYPES, FORMATS, encode, to_pcm16, wav_stream_header
from ui.describe import model_id
from ui.edge import REQUEST_ID_HEADER, log_error, request_id
from ui.health import down_stages
from ui.voices import VoiceLibrary

__all__ = ["ApiError", "ApiLimits", "SpeechApi"]

log = logging.getLogger("voxtrace.api")


@dataclass
class ApiLimits:
    """What the API admits at once; body sizes are the edge's (`ui.edge.EdgeLimits`), text lengths and clip duration
    the engine's own limits (`LimitsConfig`)."""

    max_in_flight: int = 8  # requests generating at once; one more gets 429 at once

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")


class Gate:
    """Admission by count: a request takes a place or is refused at once (no waiting room)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def try_enter(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1


class AudioStream(StreamingResponse):
    """A streaming response that always runs `on_close` (leave the gate, close the engine's iterator, which cancels an
    unfinished request), whether the stream ends, fails, or the client disconnects. A failure of the engine midway
    leaves the response unfinished, so the server closes the connection and the client knows its audio is cut."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]], **kw: Any) -> None:
        super().__init__(content, **kw)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except (RequestError, EngineError) as exc:
            error = engine_error(exc)
            log_error(scope, error.status, f"the stream was cut: {error.for_log()}")
        finally:
            await self.on_close()


def timing_headers(rid: str, first: AudioChunk) -> dict[str, str]:
    return {
        REQUEST_ID_HEADER: rid,
        "x-voxtrace-seed": "none" if first.seed is None else str(first.seed),
        "x-voxtrace-time-to-first-audio-ms": f"{(first.emitted_ns - first.submitted_ns) / 1e6:.1f}",
    }


class SpeechApi:
    """The routes over one engine; `router` is included by `ui.server.create_server` under /v1."""

    def __init__(
        self, engine: Engine, limits: ApiLimits, voices: VoiceLibrary | None = None, others: Sequence[Engine] = ()
    ) -> None:
        self.engine, self.limits, self.voices = engine, limits, voices
        # `others`: engines of the other tasks (the embedded tiny model serves all three); a request's task_type picks
        self.by_task = {e.info.task: e for e in (engine, *others)}
        self.gate = Gate(limits.max_in_flight)
        self.created = int(time.time())
        self.router = APIRouter(prefix="/v1")
        self.router.add_api_route("/models", self.models, methods=["GET"])
        self.router.add_api_route("/audio/speech", self.speech, methods=["POST"], response_class=Response)
        # last: the rest of /v1 is ours too, so an app mounted at "/" (Gradio) never answers for it
        any_method = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        self.router.add_api_route("/{path:path}", self.not_found, methods=any_method, include_in_schema=False)

    def engine_for(self, body: SpeechBody) -> Engine:
        """The engine serving the body's task_type (the main one when none is named or none serves it: the request's
        validation then names the field)."""
        try:
            task = Task.named(body.task_type) if body.task_type is not None else None
        except ValueError:
            return self.engine
        return self.by_task.get(task, self.engine) if task is not None else self.engine

    def require_ready(self, engine: Engine | None = None) -> None:
        """503 naming a stage that has no live worker: the server does not claim to serve what it cannot."""
        down = down_stages((engine or self.engine).ready())
        if down:
            raise unavailable_error(down[0])

    async def models(self) -> dict[str, Any]:
        self.require_ready()
        return {"object": "list", "data": [self._model(engine) for engine in self.by_task.values()]}

    def _model(self, engine: Engine) -> dict[str, Any]:
        info, served = engine.info, model_id(engine)
        return {
            "id": served,
            "object": "model",
            "created": self.created,
            "owned_by": "voxtrace",
            "root": served,  # the name, never the server's path to it
            "task_type": info.task,
            "languages": list(info.languages),
            "speakers": list(info.speakers),
            "sample_rate": info.sample_rate,
            "response_formats": list(FORMATS),
        }

    async def not_found(self, path: str) -> None:
        raise ApiError(404, f"no such endpoint: /v1/{path}", code="not_found")

    async def speech(self, body: SpeechBody, request: Request) -> Response:
        served = [model_id(e) for e in self.by_task.values()]
        if body.model not in (None, "", *served):
            raise ApiError(
                404,
                f"model: {body.model!r} is not served here; this server serves {', '.join(map(repr, served))}",
                "model",
                "model_not_found",
            )
        engine = self.engine_for(body)
        speech = to_speech_request(
            body,
            engine.info,
            engine.config.limits,
            request_id(request.scope),
            self.voices.get if self.voices is not None else lambda _: None,
        )
        self.require_ready(engine)
        if not self.gate.try_enter():
            raise busy_error(f"the server is busy: {self.gate.limit} requests in flight; try again shortly")
        chunks = engine.generate(speech)
        left = False

        async def close() -> None:
            nonlocal left
            if not left:
                left = True
                self.gate.leave()
            await chunks.aclose()  # cancels the request in every stage if it has not finished

        try:
            first = await anext(chunks)
        except BaseException as exc:
            await close()
            if isinstance(exc, (RequestError, EngineError)):
                raise engine_error(exc) from exc
            if isinstance(exc, StopAsyncIteration):
                raise engine_error(EngineError("the engine returned no audio")) from exc
            raise
        headers = timing_headers(speech.request_id, first)
        fmt = body.response_format
        if body.stream_format == "sse":
            content = self._sse(first, chunks, fmt, request.scope)
            return AudioStream(content, close, media_type="text/event-stream", headers=headers)
        if body.stream:
            content = self._audio(first, chunks, fmt)
            return AudioStream(content, close, media_type=CONTENT_TYPES[fmt], headers=headers)
        try:
            rest = await until_disconnect(request, collect(chunks))
        except (RequestError, EngineError) as exc:
            raise engine_error(exc) from exc
        finally:
            await close()
        if rest is None:  # the client went away; the request was cancelled
            return Response(status_code=499)
        every = [first, *rest]
        audio = encode(np.concatenate([c.samples for c in every]), first.sample_rate, fmt)
        last = every[-1]
        frames = sum(c.frames for c in every)
        headers.update(
            {
                "x-voxtrace-frames": str(frames),
                "x-voxtrace-audio-seconds": f"{last.start_sample / first.sample_rate + last.duration:.3f}",
                "x-voxtrace-total-ms": f"{(last.emitted_ns - first.submitted_ns) / 1e6:.1f}",
            }
        )
        log.info(
            "speech %s: %d frames, first audio %s ms, total %s ms",
            speech.request_id,
            frames,
            headers["x-voxtrace-time-to-first-audio-ms"],
            headers["x-voxtrace-total-ms"],
        )
        return Response(audio, media_type=CONTENT_TYPES[fmt], headers=headers)

    @staticmethod
    async def _audio(first: AudioChunk, chunks: AsyncIterator[AudioChunk], fmt: str) -> AsyncIterator[bytes]:
        """Raw s16le, or a streaming WAV (header with unknown sizes, then the same PCM); one write per engine chunk.
        An engine failure mid-stream propagates to `AudioStream`, which leaves the response unfinished."""
        head = wav_stream_header(first.sample_rate) if fmt == "wav" else b""
        yield head + to_pcm16(first.samples)
        async for chunk in chunks:
            if len(chunk.samples):
                yield to_pcm16(chunk.samples)

    @staticmethod
    async def _sse(
        first: AudioChunk, chunks: AsyncIterator[AudioChunk], fmt: str, scope: Scope
    ) -> AsyncIterator[bytes]:
        """OpenAI's speech SSE: `speech.audio.delta` events with base64 audio, then `speech.audio.done` (or `error`)."""

        def event(payload: dict[str, Any]) -> bytes:
            return f"data: {json.dumps(payload)}\n\n".encode()

        frames = first.frames
        try:
            head = wav_stream_header(first.sample_rate) if fmt == "wav" else b""
            yield event(
                {"type": "speech.audio.delta", "audio": base64.b64encode(head + to_pcm16(first.samples)).decode()}
            )
            async for chunk in chunks:
                frames += chunk.frames
                yield event({"type": "speech.audio.delta", "audio": base64.b64encode(to_pcm16(chunk.samples)).decode()})
        except (RequestError, EngineError) as exc:
            error = engine_error(exc)
            log_error(scope, error.status, f"the stream ended with an error event: {error.for_log()}")
            yield event({"type": "error", **error.body()})
            return
        yield event({"type": "speech.audio.done", "usage": {"output_tokens": frames, "total_tokens": frames}})


async def collect(chunks: AsyncIterator[AudioChunk]) -> list[AudioChunk]:
    return [chunk async for chunk in chunks]


async def until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """`work`'s result, or None if the client disconnected first (then `work` is cancelled)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
    return task.result() if not task.cancelled() else None
