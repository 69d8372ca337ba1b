"""Events: spans, instants and counters that every engine process records on one clock.

The clock is `time.perf_counter_ns()`. On Linux it is `clock_gettime(CLOCK_MONOTONIC)`, a system-wide clock
(not per process), so timestamps taken in different processes of one machine compare directly and merging needs no
offsets; `clock_name()` reports the implementation so a run can record it. Recording is a tuple append to a bounded
deque (about a microsecond): it stays on in every run. Events are turned into `Event` records only when drained.

A worker process ships its events with `EventBatch.to_bytes()`; the engine decodes them with
`EventBatch.from_bytes()` and `merge_timelines()` puts every process on one timeline.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

now_ns = time.perf_counter_ns  # the one clock (CLOCK_MONOTONIC on Linux)

SPAN, INSTANT, COUNTER = "span", "instant", "counter"

# tracks: where an event happened (a stage, the transport, the engine's front, a request's own lane)
ENGINE = "engine"
TALKER = "talker"
CODE2WAV = "code2wav"
TRANSPORT = "transport"
REQUEST = "request"
UTILIZATION = "utilization"
TRACK_ORDER = (ENGINE, TALKER, TRANSPORT, CODE2WAV)  # how lanes are stacked: the path of a request

# request milestones (instants on the REQUEST track, with the request id)
ADMITTED = "admitted"
PROMPT_READY = "prompt_ready"
PREFILL_START = "prefill_start"
FIRST_CODE_CHUNK = "first_code_chunk"
FIRST_AUDIO = "first_audio"
LAST_AUDIO = "last_audio"
FINISHED = "finished"
MILESTONES = (ADMITTED, PROMPT_READY, PREFILL_START, FIRST_CODE_CHUNK, FIRST_AUDIO, LAST_AUDIO, FINISHED)
AUDIO_CHUNK = "audio_chunk"  # instant per chunk handed to the caller, args: samples=<int>
# engine instant per `ray` actor, at its start and each drain: its clock's offset from the engine's and the bound on
# that estimate's error (args: stage, node, pid, offset_ns, error_ns, applied)
CLOCK_OFFSET = "clock_offset"

# span names (the track says which stage)
PROMPT_PREP = "prompt_prep"  # engine: text tokens, x-vector, ref codes
PREFILL = "prefill"  # talker: args batch_size, requests
DECODE_STEP = "decode_step"  # talker: args batch_size, requests
PREDICTOR = "predictor"  # talker, inside a decode step: codes 1..15
CHUNK_EMIT = "chunk_emit"  # talker: args frames
SERIALIZE = "serialize"  # transport: pack a payload (args bytes, informative)
COPY = "copy"  # transport: into/out of shared memory (args bytes, informative)
WAIT = "wait"  # transport: waiting for credits or data
HANDOFF = "handoff"  # transport: one per transfer, sender's stamp to receiver's pickup; args bytes
CODE2WAV_DECODE = "decode"  # code2wav: args batch_size, frames, requests
QUEUE_WAIT = "queue_wait"  # any stage: a request waiting to be scheduled

# counter names
IN_FLIGHT = "in_flight"
QUEUE_DEPTH = "queue_depth"
BYTES_MOVED = "bytes_moved"

DEFAULT_CAPACITY = 1 << 18  # ~262k events per process, tens of MB at most

# (kind, name, track, start_ns, dur_ns, request, args): the raw form in the buffer and on the wire
RawEvent = tuple[str, str, str, int, int, "str | None", "dict[str, Any] | None"]


class Event(NamedTuple):
    """One recorded event; `dur_ns` is 0 for instants and counters (a counter's value is `args["value"]`)."""

    kind: str
    name: str
    track: str
    pid: int
    start_ns: int
    dur_ns: int
    request: str | None = None
    args: dict[str, Any] | None = None

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.dur_ns

    def requests(self) -> tuple[str, ...]:
        """The requests this event concerns: its own, or a batched span's `requests` arg."""
        if self.request is not None:
            return (self.request,)
        return tuple(self.args.get("requests", ())) if self.args else ()


def clock_name() -> str:
    return time.get_clock_info("perf_counter").implementation


class _NoSpan:
    """Returned by `Recorder.span` when recording is off: entering and leaving cost nothing."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


class _Span:
    __slots__ = ("rec", "name", "track", "request", "args", "start_ns")

    def __init__(self, rec: Recorder, name: str, track: str, request: str | None, args: dict[str, Any] | None):
        self.rec, self.name, self.track, self.request, self.args = rec, name, track, request, args

    def __enter__(self) -> _Span:
        self.start_ns = now_ns()
        return self

    def __exit__(self, *exc: object) -> None:
        start = self.start_ns
        self.rec._push((SPAN, self.name, self.track, start, now_ns() - start, self.request, self.args))


class _RangeSpan(_Span):
    """A span that is also a torch.profiler `record_function` range, used only while a capture is active."""

    __slots__ = ("range",)

    def __enter__(self) -> _RangeSpan:
        self.range = self.rec.range_factory(f"{self.track}/{self.name}")  # type: ignore[misc]
        self.range.__enter__()
        self.start_ns = now_ns()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.range.__exit__(None, None, None)


class Recorder:
    """A per-process event buffer. Bounded: when full the oldest event goes and `dropped` counts it.

    Thread-safe for recording (a deque append is atomic); `dropped` may undercount under heavy contention.
    """

    def __init__(self, process: str = "main", capacity: int = DEFAULT_CAPACITY, enabled: bool = True):
        self.process = process
        self.pid = os.getpid()
        self.enabled = enabled
        self.capacity = capacity
        self.dropped = 0
        self.range_factory: Callable[[str], AbstractContextManager[Any]] | None = None  # set by a torch capture
        self._buf: deque[RawEvent] = deque(maxlen=capacity)

    def _push(self, raw: RawEvent) -> None:
        buf = self._buf
        if len(buf) == self.capacity:
            self.dropped += 1
        buf.append(raw)

    def span(self, name: str, track: str, request: str | None = None, **args: Any) -> AbstractContextManager[Any]:
        """`with rec.span(DECODE_STEP, TALKER, batch_size=4): ...` times the block."""
        if not self.enabled:
            return _NO_SPAN
        if self.range_factory is not None:
            return _RangeSpan(self, name, track, request, args or None)
        return _Span(self, name, track, request, args or None)

    def record_span(
        self, name: str, track: str, start_ns: int, end_ns: int | None = None, request: str | None = None, **args: Any
    ) -> None:
        """A span from timestamps the caller already has (`start_ns = now_ns()` earlier); `end_ns` defaults to now."""
        if self.enabled:
            end = now_ns() if end_ns is None else end_ns
            self._push((SPAN, name, track, start_ns, end - start_ns, request, args or None))

    def instant(self, name: str, track: str = REQUEST, request: str | None = None, **args: Any) -> None:
        if self.enabled:
            self._push((INSTANT, name, track, now_ns(), 0, request, args or None))

    def counter(self, name: str, value: float, track: str = ENGINE) -> None:
        if self.enabled:
            self._push((COUNTER, name, track, now_ns(), 0, None, {"value": value}))

    def drain(self) -> list[Event]:
        """Take every buffered event, oldest first."""
        buf, pid, out = self._buf, self.pid, []
        for _ in range(len(buf)):  # what is there now: other threads may keep appending
            kind, name, track, start, dur, request, args = buf.popleft()
            out.append(Event(kind, name, track, pid, start, dur, request, args))
        return out

    def drain_batch(self) -> EventBatch:
        """Drain into the form that crosses process boundaries; resets the drop count."""
        dropped, self.dropped = self.dropped, 0
        return EventBatch(self.pid, self.process, self.drain(), dropped)

    def _after_fork(self) -> None:
        self.pid, self.dropped, self._buf = os.getpid(), 0, deque(maxlen=self.capacity)


_recorder = Recorder()
os.register_at_fork(after_in_child=_recorder._after_fork)


def get_recorder() -> Recorder:
    """This process's recorder (a forked child starts with an empty one and its own pid)."""
    return _recorder


def set_process_name(name: str) -> None:
    """A worker calls this once at start so its events are labelled by stage, not only by pid."""
    _recorder.process = name


def _jsonable(value: Any) -> Any:
    """Args may hold numpy scalars or tensors' sizes: keep numbers as numbers, anything else as text."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


@dataclass
class EventBatch:
    """One process's drained events: the one form events take between processes and on disk."""

    pid: int
    process: str
    events: list[Event]
    dropped: int = 0
    clock: str = field(default_factory=clock_name)

    def to_bytes(self) -> bytes:
        rows = [(e.kind, e.name, e.track, e.pid, e.start_ns, e.dur_ns, e.request, e.args) for e in self.events]
        head = {"pid": self.pid, "process": self.process, "dropped": self.dropped, "clock": self.clock}
        return json.dumps({**head, "events": rows}, default=_jsonable, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> EventBatch:
        d = json.loads(data)
        events = [Event(*row) for row in d["events"]]
        return cls(d["pid"], d["process"], events, d["dropped"], d["clock"])


@dataclass
class Timeline:
    """Every process's events of one run on one clock, ordered by start time."""

    events: list[Event]
    processes: dict[int, str] = field(default_factory=dict)
    dropped: dict[int, int] = field(default_factory=dict)

    @property
    def t0_ns(self) -> int:
        return self.events[0].start_ns if self.events else 0

    @property
    def end_ns(self) -> int:
        return max((e.end_ns for e in self.events), default=0)

    def select(
        self, kind: str | None = None, name: str | None = None, track: str | None = None, request: str | None = None
    ) -> list[Event]:
        """Events matching every given field; `request` also matches batched spans that list it."""
        return [
            e
            for e in self.events
            if (kind is None or e.kind == kind)
            and (name is None or e.name == name)
            and (track is None or e.track == track)
            and (request is None or request in e.requests())
        ]

    def requests(self) -> list[str]:
        """Request ids in order of first appearance."""
        seen: dict[str, None] = {}
        for e in self.events:
            for r in e.requests():
                seen.setdefault(r, None)
        return list(seen)

    def milestones(self, request: str) -> dict[str, int]:
        """Milestone name -> first timestamp (ns) for one request."""
        out: dict[str, int] = {}
        for e in self.events:
            if e.kind == INSTANT and e.request == request and e.name in MILESTONES:
                out.setdefault(e.name, e.start_ns)
        return out

    def to_bytes(self) -> bytes:
        batches = [EventBatch(pid, name, [], self.dropped.get(pid, 0)) for pid, name in self.processes.items()]
        batches.append(EventBatch(-1, "", self.events))
        return b"\n".join(b.to_bytes() for b in batches)

    @classmethod
    def from_bytes(cls, data: bytes) -> Timeline:
        return merge_timelines(EventBatch.from_bytes(line) for line in data.splitlines() if line)


def merge_timelines(batches: Iterable[EventBatch | Sequence[Event]]) -> Timeline:
    """One timeline from many processes. Sorting by start is stable, so each process keeps its own order
    for equal timestamps; a batch with pid -1 contributes events only (how `Timeline.to_bytes` stores them)."""
    events: list[Event] = []
    processes: dict[int, str] = {}
    dropped: dict[int, int] = {}
    for batch in batches:
        if isinstance(batch, EventBatch):
            if batch.pid >= 0:
                processes[batch.pid] = batch.process
                dropped[batch.pid] = dropped.get(batch.pid, 0) + batch.dropped
            events.extend(batch.events)
        else:
            events.extend(batch)
    for e in events:
        processes.setdefault(e.pid, f"pid {e.pid}")
    events.sort(key=lambda e: e.start_ns)
    return Timeline(events, processes, dropped)
