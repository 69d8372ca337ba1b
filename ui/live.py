"""Generate, straight over HTTP: at the click the page's player posts the form to `POST /voxtrace/synthesize` and plays
the audio from that same response as it is made. Nothing waits for a round trip through Gradio's queue before the
engine starts (that wait was most of the first-sound time a user heard). The run itself is a task on the server's
event loop; the page's Gradio event collects its result afterwards (`LiveRuns.result`), with what the listener heard.

The response body is framed, one frame per engine chunk, so the player counts exactly the chunks the engine made:
a little-endian uint32 sample count, then that many float32 samples; a frame of 0 samples ends a complete stream (a
stream that stops without it was cut: the run failed, and its result says why).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ui.edge import log_error

SYNTH_ROUTE = "/voxtrace/synthesize"
MAX_RUNS = 32  # runs kept for their page to collect; past that the oldest are dropped (cancelled if still running)
END = struct.pack("<I", 0)

log = logging.getLogger("voxtrace.live")
T = TypeVar("T")


class RunError(Exception):
    """A run refused (a bad field, no engine for these settings) or failed by the engine; the message is for the
    page."""


@dataclass(frozen=True)
class Started:
    """What the player needs before the first chunk: the run's id (to collect it), the rate and the engine's label."""

    run_id: str
    sample_rate: int
    engine: str


class Feed:
    """One run's audio on its way to the HTTP response that reads it: `start` once the run has an engine, then
    `push` per chunk, then `end` (complete) or `close` (cut)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.started: asyncio.Future[Started] = asyncio.get_running_loop().create_future()
        self.frames: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._open = True

    def start(self, sample_rate: int, engine: str) -> None:
        if not self.started.done():
            self.started.set_result(Started(self.run_id, sample_rate, engine))

    def push(self, samples: np.ndarray) -> None:
        if self._open:
            data = np.ascontiguousarray(samples, dtype="<f4")
            self.frames.put_nowait(struct.pack("<I", len(data)) + data.tobytes())

    def end(self) -> None:
        """The last chunk went out: the stream is complete."""
        if self._open:
            self.frames.put_nowait(END)
        self.close()

    def close(self) -> None:
        if self._open:
            self._open = False
            self.frames.put_nowait(None)

    async def body(self) -> AsyncIterator[bytes]:
        while (frame := await self.frames.get()) is not None:
            yield frame


class LiveRuns(Generic[T]):
    """The runs started over HTTP, by id (an unguessable token), until their page collects them."""

    def __init__(self, limit: int = MAX_RUNS) -> None:
        self.limit = limit
        self._tasks: OrderedDict[str, asyncio.Task[T]] = OrderedDict()

    def start(self, run: Callable[[Feed], Awaitable[T]]) -> tuple[Feed, asyncio.Task[T]]:
        feed = Feed(secrets.token_urlsafe(12))
        task = asyncio.ensure_future(run(feed))
        task.add_done_callback(lambda _: feed.close())
        self._tasks[feed.run_id] = task
        while len(self._tasks) > self.limit:
            self._tasks.popitem(last=False)[1].cancel()
        return feed, task

    def drop(self, run_id: str) -> None:
        """Forget a run, cancelling it if it still runs."""
        task = self._tasks.pop(run_id, None)
        if task is not None:
            task.cancel()

    async def result(self, run_id: str) -> T:
        """The run's outcome, once (it raises what the run raised); `KeyError` for an id this server does not hold."""
        task = self._tasks.pop(run_id)
        return await asyncio.shield(task)


def add_live_route(app: FastAPI, runs: LiveRuns[Any], start: Callable[[dict[str, Any], Feed], Awaitable[Any]]) -> None:
    """`POST SYNTH_ROUTE` with the form as JSON: the response starts with the run's first chunk (the framed audio, with
    the run's id, rate and engine in headers), so a run that ends before any audio (refused, or failed by the engine)
    is a 400 `{"error": message}`. A client that leaves cancels its run."""

    @app.post(SYNTH_ROUTE)
    async def synthesize(request: Request) -> Response:
        try:
            form = await request.json()
        except ValueError:
            form = None
        if not isinstance(form, dict):
            return _refused(request, "the body must be a JSON object of the form's fields")
        feed, task = runs.start(lambda feed: start(form, feed))
        await asyncio.wait([feed.started, task], return_when=asyncio.FIRST_COMPLETED)
        if not feed.started.done():
            exc = task.exception()
            runs.drop(feed.run_id)
            if isinstance(exc, RunError):
                return _refused(request, str(exc))
            log.error("live run %s failed to start", feed.run_id, exc_info=exc)
            return JSONResponse({"error": "internal error (see the server log)"}, status_code=500)
        started = feed.started.result()
        headers = {
            "X-Run-Id": started.run_id,
            "X-Sample-Rate": str(started.sample_rate),
            "X-Engine": started.engine,
            "Cache-Control": "no-store",
        }

        async def body() -> AsyncIterator[bytes]:
            read = False
            try:
                async for frame in feed.body():
                    yield frame
                read = True
            finally:
                if not read:  # the listener left mid-stream: nobody will collect this run
                    runs.drop(feed.run_id)

        return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)


def _refused(request: Request, message: str) -> JSONResponse:
    log_error(request.scope, 400, message)
    return JSONResponse({"error": message}, status_code=400)
