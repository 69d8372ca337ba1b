"""Star routing between the stages and the callers' streams: every stage output comes back to the engine's process,
which forwards code chunks to Code2Wav and audio (or the end) to the request's stream.

The router also holds the places: a request takes one when admitted (refused while the engine is full, closed, or a
stage has no worker) and gives it back the moment its caller leaves. Failures reach only their request: a `Failed`
ends that stream, a dead worker ends the streams it held and hands the stage to its `Restarter`. What a stream's
caller reads is short; the detail went to the log where it was found.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from engine.request import EngineBusy, EngineError, RequestError, StageUnavailable
from engine.runtime import Executor, ExecutorError, PayloadTooLarge, TransportError
from engine.runtime.restarter import Restarter, StageState
from engine.stages.messages import AudioOut, Cancel, CodeChunk, Failed, StageInput, StageOutput, TalkerJob
from telemetry.events import ENGINE, IN_FLIGHT, Recorder

log = logging.getLogger(__name__)


@dataclass
class Stream:
    """The engine's side of one request's stream: its prompt-prep result, then its audio, then the end, all through
    one queue, so that whatever ends the request (a failure, a death, close) reaches it wherever it waits."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    prep: Future[TalkerJob] | None = None
    finished: bool = False

    def put(self, item: TalkerJob | AudioOut | Exception) -> None:
        with contextlib.suppress(RuntimeError):  # the caller's event loop is closed: nobody listens any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def prepared(self, prep: Future[TalkerJob]) -> None:
        if not prep.cancelled():
            self.put(prep.exception() or prep.result())


class Router:
    """Routes between the stages (`stages`, each kept running by its `restarters` entry) and the streams."""

    def __init__(self, stages: dict[str, Executor], restarters: dict[str, Restarter], places: int, rec: Recorder):
        self.stages, self.restarters, self.places, self.recorder = stages, restarters, places, rec
        self.streams: dict[str, Stream] = {}
        self.closed = False
        self._lock = threading.Lock()

    # -- places

    def admit(self, rid: str) -> Stream:
        """A place for the request, or why not: closed, a stage without a worker, a duplicate id, or full."""
        with self._lock:
            if self.closed:
                raise EngineError("the engine is closed")
            for kind in self.restarters:
                self.check(kind)
            if rid in self.streams:
                raise RequestError("request_id", f"{rid!r} is already in flight")
            if len(self.streams) >= self.places:
                raise EngineBusy(f"the engine is busy: {len(self.streams)} requests in flight (limit {self.places})")
            stream = self.streams[rid] = Stream(asyncio.get_running_loop())
            self.recorder.counter(IN_FLIGHT, len(self.streams), track=ENGINE)
        return stream

    def end(self, rid: str, cancel: bool) -> None:
        """Give the request's place back; `cancel`: it did not finish, so the stages drop what they hold of it."""
        with self._lock:
            stream = self.streams.pop(rid, None)
            self.recorder.counter(IN_FLIGHT, len(self.streams), track=ENGINE)
        if stream is not None and stream.prep is not None:
            stream.prep.cancel()  # still queued: it never runs; running: its result is dropped
        if cancel and not self.closed:
            for executor in self.stages.values():
                with contextlib.suppress(ExecutorError, TransportError):
                    if executor.alive:
                        executor.submit(Cancel(rid))

    def close(self) -> None:
        """No more requests; every stream in flight ends with an EngineError now."""
        with self._lock:
            self.closed = True
            streams, self.streams = dict(self.streams), {}
        for stream in streams.values():
            stream.put(EngineError("the engine was closed"))

    # -- into the stages

    def check(self, kind: str) -> None:
        """Raise `StageUnavailable` while the stage has no worker."""
        restarter = self.restarters[kind]
        if restarter.up:
            return
        if restarter.state is StageState.DOWN:
            raise StageUnavailable(kind, f"the {kind} stage is down: its worker died and could not be replaced")
        raise StageUnavailable(kind, f"the {kind} stage has no worker right now (a new one is starting); try again")

    def submit(self, kind: str, message: StageInput) -> None:
        """Hand a request's message to a stage; what stops it is said as the caller's error."""
        rid = getattr(message, "request_id", None)
        try:
            self.stages[kind].submit(message)
        except ExecutorError:
            if self.closed:
                raise EngineError("the engine was closed") from None
            self.check(kind)
            raise StageUnavailable(kind, f"the {kind} stage has no worker right now; try again") from None
        except PayloadTooLarge as exc:
            log.error("request %s: %s", rid, exc)
            raise EngineError(f"the request is too large for the {kind} stage's transport") from None
        except TransportError as exc:
            log.error("request %s: %s", rid, exc)
            raise EngineError(f"the {kind} stage did not take the request in time") from None

    # -- out of the stages (called on their threads)

    def from_talker(self, out: StageOutput) -> None:
        if isinstance(out, Failed):
            self.fail(out.request_id, out.message)
        elif isinstance(out, CodeChunk) and out.request_id in self.streams:
            try:
                self.stages["code2wav"].submit(out)
            except (ExecutorError, TransportError) as exc:  # code2wav is down or the chunk cannot travel
                log.warning("request %s: could not hand a chunk to code2wav: %s", out.request_id, exc)
                self.fail(out.request_id, "code2wav: the stage could not take its audio codes")
                with contextlib.suppress(ExecutorError, TransportError):
                    self.stages["talker"].submit(Cancel(out.request_id))

    def from_code2wav(self, out: StageOutput) -> None:
        if isinstance(out, Failed):
            self.fail(out.request_id, out.message)
        elif isinstance(out, AudioOut) and (stream := self.streams.get(out.request_id)) is not None:
            stream.put(out)

    def fail(self, rid: str, message: str) -> None:
        """End a request's stream with `message` (short, for the client: the detail is logged where it was found)."""
        stream = self.streams.get(rid)
        if stream is not None:
            log.warning("request %s failed: %s", rid, message)
            stream.put(EngineError(f"request {rid} failed: {message}"))

    def on_death(self, kind: str, reason: str) -> None:
        """A stage's worker died (said on its receiver or stage thread): fail the requests it held, the others go
        on; a replacement starts on the restarter's thread, and until it is up new requests get StageUnavailable."""
        log.error("the %s worker died: %s", kind, reason)
        for rid in self.stages[kind].in_flight():
            self.fail(rid, f"the {kind} worker died while serving this request")
        if not self.closed:
            self.restarters[kind].dead()
