"""`Router`: the stages' executors, the callers' streams, and everything that passes between them.

Paths: each stage output comes to the engine's process, which hands audio (or the end) to the request's stream, and
code chunks to Code2Wav (the star path), except in `mp`-`mp`, where the talker's worker sends its chunks straight to
Code2Wav's over a link of their own (`runtime.link`, relinked whenever either worker is replaced) and the engine
sees only audio and control. Each stream is bounded by credits (chunks it may have in flight), granted back to the
talker as its caller consumes (`consumed`), so a slow listener pauses only its own row.

The router also holds the places and the one ledger of requests in flight: a request takes a place when admitted
(refused while the engine is full, closed, or a stage has no worker) and gives it back the moment its caller leaves;
its stream knows which stages may hold a part of it. Failures reach only their request: a `Failed` ends that stream,
a dead worker ends the streams it may hold and hands the stage to its `Restarter`. What a stream's caller reads is
short; the detail went to the log where it was found.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.config import RayClusterConfig, StageConfig
from engine.parallel import start_all
from engine.request import EngineBusy, EngineError, RequestError, StageUnavailable
from engine.runtime import Executor, ExecutorError, MpExecutor, PayloadTooLarge, TransportError, make_executor
from engine.runtime.link import connect
from engine.runtime.loop import StageFactory
from engine.runtime.restarter import Restarter, RestartPolicy, StageState
from engine.stages.messages import (
    CANCELS_REMEMBERED,
    AudioOut,
    Cancel,
    CodeChunk,
    Credit,
    Failed,
    StageInput,
    StageOutput,
    TalkerJob,
    WarmPrefix,
)
from telemetry.events import ENGINE, IN_FLIGHT, Recorder

if TYPE_CHECKING:  # Ray is imported only when a stage runs on it
    from engine.runtime.ray_placement import Bundle

log = logging.getLogger(__name__)
STAGES = ("talker", "code2wav")  # in pipeline order


@dataclass
class Stream:
    """The engine's side of one request's stream: its prompt-prep result, then its audio, then the end, all through
    one queue, so that whatever ends the request (a failure, a death, close) reaches it wherever it waits."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    prep: Future[TalkerJob] | None = None
    stages: set[str] = field(default_factory=set)  # the stages that may hold a part of it: what a death fails
    finished: bool = False
    frames_due: int = 0  # frames its talker may still make (its cap less those come back as audio): queued work

    def put(self, item: TalkerJob | AudioOut | Exception) -> None:
        with contextlib.suppress(RuntimeError):  # the caller's event loop is closed: nobody listens any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def prepared(self, prep: Future[TalkerJob]) -> None:
        if not prep.cancelled():
            self.put(prep.exception() or prep.result())


class Router:
    """Routes between the stages (each kept running by its `restarters` entry) and the streams."""

    def __init__(self, places: int, rec: Recorder, label: str = "") -> None:
        """`label`: the replica's, put after each stage's name (its process, its threads, its events); "" alone."""
        self.places, self.recorder, self.label = places, rec, label
        self.stages: dict[str, Executor] = {}
        self.restarters: dict[str, Restarter] = {}
        self.streams: dict[str, Stream] = {}
        self.cancelled: OrderedDict[str, None] = OrderedDict()  # ids the stages still drop chunks of
        self.direct = False  # talker -> code2wav over their own link (both `mp`)
        self._bundles: dict[str, Bundle] = {}  # the `ray` stages' places in this replica's placement group
        self.closed = False
        self._lock = threading.Lock()
        self._link_lock = threading.Lock()
        self._link_ring_bytes = 0

    # -- the stages' life

    def start(
        self,
        configs: dict[str, StageConfig],
        factories: dict[str, StageFactory],
        direct_link: bool = True,
        cluster: RayClusterConfig | None = None,
    ) -> None:
        """Start each stage under its configured executor: the ones in processes of their own side by side (no request
        comes before all are up), the `uni` ones one after another in one thread (a CUDA graph being captured in this
        process forbids other threads' CUDA calls). In `mp`-`mp`, link the two workers unless `direct_link` is off
        (the star path, to compare). With a placement strategy in `cluster`, the `ray` stages' resources are reserved
        together first."""
        self.direct = direct_link and all(configs[kind].executor == "mp" for kind in STAGES)
        self._link_ring_bytes = configs["code2wav"].ring_mb * 2**20
        on_ray = {kind: configs[kind].ray for kind in STAGES if configs[kind].executor == "ray"}
        if on_ray and cluster is not None and cluster.placement_strategy is not None:
            from engine.runtime import ray_placement

            self._bundles = ray_placement.reserve(on_ray, cluster, f"{os.getpid()}{self.label or '@r0'}")
        for kind in reversed(STAGES):
            config = configs[kind]
            placement = {"placement": config.ray, "bundle": self._bundles.get(kind)} if config.executor == "ray" else {}
            executor = make_executor(
                config.executor,
                factories[kind],
                self.from_talker if kind == "talker" else self.from_code2wav,
                f"{kind}{self.label}",
                config.threads,
                functools.partial(self.on_death, kind),
                ring_bytes=config.ring_mb * 2**20,
                **placement,
            )
            policy = RestartPolicy(config.restart_backoff_s, config.restart_max_s)
            self.stages[kind], self.restarters[kind] = executor, Restarter(executor, policy, self._link)
        in_process = [self.stages[kind] for kind in STAGES if configs[kind].executor == "uni"]
        apart = [self.stages[kind].start for kind in STAGES if configs[kind].executor != "uni"]
        start_all([*apart, lambda: [executor.start() for executor in in_process]])  # the engine closes what started
        self._link()

    def _link(self) -> None:
        """In `mp`-`mp`, a new link between the two workers (at start, and whenever either was replaced); a worker
        not up yet is linked when it is."""
        if not self.direct or self.closed:
            return
        talker, code2wav = self.stages.get("talker"), self.stages.get("code2wav")
        if not (isinstance(talker, MpExecutor) and isinstance(code2wav, MpExecutor)):
            return
        with self._link_lock:
            if talker.alive and code2wav.alive:
                connect(talker, code2wav, self._link_ring_bytes, talker.send_timeout_s)

    def ready(self) -> dict[str, bool]:
        """Stage name -> whether it has a live worker (or thread) now."""
        return {kind: restarter.up for kind, restarter in self.restarters.items()}

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
            if rid in self.cancelled:
                raise RequestError("request_id", f"{rid!r} names a request cancelled earlier; use a new id")
            if len(self.streams) >= self.places:
                raise EngineBusy(f"the engine is busy: {len(self.streams)} requests in flight (limit {self.places})")
            stream = self.streams[rid] = Stream(asyncio.get_running_loop())
            self.recorder.counter(IN_FLIGHT, len(self.streams), track=ENGINE)
        return stream

    def end(self, rid: str, cancel: bool) -> None:
        """Give the request's place back; `cancel`: it did not finish, so the stages it reached drop what they hold
        of it (and its id is refused while they may still drop late chunks of it)."""
        with self._lock:
            stream = self.streams.pop(rid, None)
            self.recorder.counter(IN_FLIGHT, len(self.streams), track=ENGINE)
            reached = cancel and stream is not None and bool(stream.stages)
            if reached:
                self.cancelled[rid] = None
                while len(self.cancelled) > CANCELS_REMEMBERED:
                    self.cancelled.popitem(last=False)
        if stream is not None and stream.prep is not None:
            stream.prep.cancel()  # still queued: it never runs; running: its result is dropped
        if reached and not self.closed:
            for executor in self.stages.values():
                with contextlib.suppress(ExecutorError, TransportError):
                    if executor.alive:
                        executor.submit(Cancel(rid))

    def requests_in(self, kind: str) -> list[str]:
        """The requests that stage `kind` may hold now: the ones its worker's death would fail."""
        return [rid for rid, stream in list(self.streams.items()) if kind in stream.stages]

    def close(self, left: Callable[[], float]) -> None:
        """No more requests; every stream in flight ends with an EngineError now; then every stage stops (the
        producer first), each within what `left()` says is left of the grace."""
        with self._lock:
            self.closed = True
            streams, self.streams = dict(self.streams), {}
        for stream in streams.values():
            stream.put(EngineError("the engine was closed"))
        for restarter in self.restarters.values():
            restarter.stop()
        for kind in STAGES:
            if kind in self.stages:
                self.stages[kind].close(left())
        for restarter in self.restarters.values():
            restarter.join(left())
        if self._bundles:
            from engine.runtime import ray_placement

            ray_placement.release(self._bundles)
            self._bundles = {}

    # -- into the stages

    def check(self, kind: str) -> None:
        """Raise `StageUnavailable` while the stage has no worker."""
        restarter = self.restarters[kind]
        if restarter.up:
            return
        if restarter.state is StageState.DOWN:
            raise StageUnavailable(kind, f"the {kind} stage is down: its worker died and could not be replaced")
        raise StageUnavailable(kind, f"the {kind} stage has no worker right now (a new one is starting); try again")

    def run(self, job: TalkerJob) -> None:
        """Start the request in the talker; from then on its chunks may be in code2wav without passing here."""
        stream = self.streams.get(job.request_id)
        if stream is not None:
            stream.stages.update(STAGES if self.direct else ("talker",))
            stream.frames_due = job.params.max_new_tokens
        self._submit("talker", job)

    def consumed(self, out: AudioOut) -> None:
        """The caller took a chunk: the talker may make one more (unless that was the last)."""
        if not out.is_last:
            with contextlib.suppress(ExecutorError, TransportError):  # a dead talker fails the stream itself
                self.stages["talker"].submit(Credit(out.request_id))

    def warm(self, prefix: WarmPrefix) -> None:
        """A hint for code2wav (best effort: a stage being replaced just misses it)."""
        if self.restarters["code2wav"].up:
            with contextlib.suppress(ExecutorError, TransportError):
                self.stages["code2wav"].submit(prefix)

    def _submit(self, kind: str, message: StageInput) -> None:
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
        elif isinstance(out, CodeChunk) and (stream := self.streams.get(out.request_id)) is not None:
            stream.stages.add("code2wav")
            if out.is_last:
                stream.stages.discard("talker")
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
            stream.frames_due = 0 if out.is_last else max(stream.frames_due - out.frames, 0)
            stream.put(out)

    def fail(self, rid: str, message: str) -> None:
        """End a request's stream with `message` (short, for the client: the detail is logged where it was found)."""
        stream = self.streams.get(rid)
        if stream is not None:
            log.warning("request %s failed: %s", rid, message)
            stream.put(EngineError(f"request {rid} failed: {message}"))

    def on_death(self, kind: str, reason: str) -> None:
        """A stage's worker died (said on its receiver or stage thread): fail the requests it may hold, the others
        go on; a replacement starts on the restarter's thread, and until it is up new requests get StageUnavailable."""
        log.error("the %s worker died: %s", kind, reason)
        for rid in self.requests_in(kind):
            self.fail(rid, f"the {kind} worker died while serving this request")
        if not self.closed:
            self.restarters[kind].dead()
