"""Executors: where a stage's loop runs. Same interface for all, so each stage picks one in its config (the third,
`RayExecutor`, a Ray actor, lives in `runtime.ray_executor`, loaded only when a stage asks for it).

- `UniExecutor`: a thread of the engine's process; messages pass as they are (no copy, tensors stay on their device).
  Its transport events (HANDOFF, bytes=0: submit to pick-up) and the stage's own events land in the engine's
  recorder, and its profiler is the engine's: `call` has no process to ask, and answers None.
- `MpExecutor`: a spawned worker process running the same loop, fed over pipes with headers and shared-memory rings
  (`transport`). A receiver thread per worker blocks on the output pipe and the process sentinel: it delivers outputs
  and notices a death at once. `call(request)` asks the worker a control question (`runtime.control`).

Both call `on_output` from their own thread (the stage thread, the receiver thread): it must not block for long,
since it back-pressures the stage. `on_death(reason)` is called from that same thread, once per death (never on
`close`); which requests die with the stage is the router's to know (its ledger), not the executor's. `restart()`
replaces a dead stage; it blocks for the start-up, so it belongs on a thread of its own (`runtime.restarter`), not
inside `on_death`. `close()` is for good: a `start` or `restart` running on another thread meanwhile fails, and
leaves nothing behind.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import traceback
import warnings
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from engine.runtime.control import Reply, Request
from engine.runtime.loop import STOP, StageFactory, stage_loop
from engine.runtime.transport import DEFAULT_RING_BYTES
from engine.stages.messages import StageInput, StageOutput
from telemetry.events import HANDOFF, TRANSPORT, get_recorder, now_ns

log = logging.getLogger(__name__)

OnOutput = Callable[[StageOutput], None]
OnDeath = Callable[[str], None]
DEFAULT_GRACE_S = 10.0  # how long `close` lets a stage stop by itself before it is stopped by force


class ExecutorError(RuntimeError):
    """The stage cannot be reached: it failed to start, died, or is closed."""


def _close_at_exit(ref: weakref.ref[Executor]) -> None:
    executor = ref()
    if executor is not None:
        executor.close()


class Executor(ABC):
    """Runs one stage built by `stage_factory` and delivers its outputs to `on_output`."""

    def __init__(
        self,
        stage_factory: StageFactory,
        on_output: OnOutput,
        name: str,
        threads: int = 1,
        on_death: OnDeath | None = None,
        ring_bytes: int = DEFAULT_RING_BYTES,
        start_timeout_s: float = 600.0,
        send_timeout_s: float = 60.0,
    ):
        self.factory, self.on_output, self.name, self.threads = stage_factory, on_output, name, threads
        self.on_death = on_death or (lambda reason: log.error("%s", reason))
        self.ring_bytes, self.start_timeout_s, self.send_timeout_s = ring_bytes, start_timeout_s, send_timeout_s
        self._lock = threading.Lock()  # mp: one writer at a time into the input pipe and ring
        self._state_lock = threading.Lock()  # start, stop and close against each other
        self._closed = False
        atexit.register(_close_at_exit, weakref.ref(self))

    @abstractmethod
    def start(self, timeout_s: float | None = None) -> None:
        """Build the stage (in the worker for `mp`, waiting at most `timeout_s`, default `start_timeout_s`) and
        start its loop; raises if the factory fails, and `ExecutorError` once closed."""

    @abstractmethod
    def submit(self, message: StageInput) -> None:
        """Hand one input to the stage; `mp` blocks while its input ring is full (back-pressure)."""

    @abstractmethod
    def call(self, request: Request, timeout_s: float = 60.0) -> Reply | None:
        """Ask the stage's process a control question and wait for its answer (served between two steps); None when
        the stage has no process of its own (`uni`) or it is gone. Raises `ExecutorError` if the answer does not come
        within `timeout_s` or says the request failed."""

    @abstractmethod
    def _stop(self, grace_s: float) -> None:
        """Stop the current stage, if any (letting it stop by itself for up to `grace_s`), and release it."""

    def close(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        """Stop the stage for good and release everything it holds, within about `grace_s`; idempotent."""
        with self._state_lock:
            self._closed = True
        self._stop(grace_s)

    def _check_open(self) -> None:
        if self._closed:
            raise ExecutorError(f"{self.name} stage is closed")

    @property
    @abstractmethod
    def alive(self) -> bool: ...

    @property
    def pid(self) -> int | None:
        """The stage's own process, or None when it runs in the engine's (`uni`)."""
        return None

    def restart(self, timeout_s: float | None = None) -> None:
        """A fresh stage (and for `mp` a fresh process and rings) after a death."""
        self._stop(DEFAULT_GRACE_S)
        self.start(timeout_s)

    def _deliver(self, out: StageOutput) -> None:
        try:
            self.on_output(out)
        except Exception:
            log.exception("%s: on_output raised", self.name)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class UniExecutor(Executor):
    """The stage loop in a thread of this process. `threads` is not applied: torch threads are per process."""

    _thread: threading.Thread | None = None
    _queue: queue.SimpleQueue[Any]

    def start(self, timeout_s: float | None = None) -> None:
        self._check_open()
        stage = self.factory()  # on the caller's thread, so a failing factory raises here
        with self._state_lock:
            self._check_open()  # closed while the factory ran
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(
                target=self._run, args=(stage, self._queue), name=f"{self.name}-stage", daemon=True
            )
            self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, message: StageInput) -> None:
        if not self.alive:
            raise ExecutorError(f"{self.name} stage is not running")
        self._queue.put((message, now_ns()))

    def call(self, request: Request, timeout_s: float = 60.0) -> Reply | None:
        return None  # the stage shares this process: its recorder and profiler are the engine's

    def _stop(self, grace_s: float) -> None:
        with self._state_lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(STOP)
        if thread is not threading.current_thread():
            thread.join(timeout=grace_s)  # a thread cannot be stopped by force: a step that hangs is left behind
            if thread.is_alive():
                warnings.warn(f"{self.name} stage thread did not stop within {grace_s:g} s", stacklevel=2)

    def _run(self, stage: Any, inbox: queue.SimpleQueue[Any]) -> None:
        rec = get_recorder()

        def get(block: bool) -> Any:
            try:
                item = inbox.get(block)
            except queue.Empty:
                return None
            if item is STOP:
                return STOP
            msg, sent_ns = item
            request = getattr(msg, "request_id", None)
            rec.record_span(HANDOFF, TRANSPORT, sent_ns, request=request, bytes=0, message=type(msg).__name__)
            return msg

        try:
            stage_loop(stage, get, self._deliver)
        except BaseException:
            text = traceback.format_exc()
            with self._state_lock:
                mine = self._thread is threading.current_thread()  # not stopped meanwhile
                if mine:
                    self._thread = None
            if mine:
                self.on_death(f"{self.name} stage raised:\n{text}")
