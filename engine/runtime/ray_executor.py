"""`RayExecutor`: the stage loop in a Ray actor (`runtime.ray_actor`), placed by the stage's `ray` settings on this
machine or another node of the cluster (`runtime.ray_cluster`). Inputs go as numbered actor calls, tensors through
Ray's object store (`runtime.ray_wire`); a receiver thread keeps one `outputs` call waiting on the actor (a long
poll): it delivers outputs as they come and sees the actor's death at once, as Ray fails that call.

Ray does not restart the actor (`max_restarts=0`): a death is reported as for `mp`, and the engine's `Restarter`
starts a new actor with the same bounded backoff. `close` stops the loop, kills the actor and, on this node, waits
for its process to be gone; nothing of the stage is left in the cluster. Events from the actor are put on the
engine's clock by the offset `runtime.ray_clock` measures at start and again at each drain."""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass
from typing import Any

import psutil
import ray
from ray.exceptions import GetTimeoutError, RayError

from engine.config import RayPlacement
from engine.runtime import ray_clock
from engine.runtime.control import ControlFailed, DrainEvents, Events, Reply, Request, WorkerError
from engine.runtime.executor import DEFAULT_GRACE_S, Executor, ExecutorError
from engine.runtime.ray_actor import CONCURRENCY, ActorInfo, StageActor
from engine.runtime.ray_clock import ClockOffset
from engine.runtime.ray_placement import Bundle, actor_resources
from engine.runtime.ray_wire import Packed, pack, unpack
from engine.stages.messages import StageInput
from telemetry.events import CLOCK_OFFSET, ENGINE, EventBatch, get_recorder

ACTOR_PREFIX = "voxtrace-"  # voxtrace-<pid of the engine>-<stage>-<random>: whose an actor is, in `ray list actors`
KILL_WAIT_S = 5.0  # after ray.kill, how long this node's actor process may take to be gone
_RemoteStageActor = ray.remote(max_concurrency=CONCURRENCY, max_restarts=0, max_task_retries=0)(StageActor)


@dataclass
class _Actor:
    """One actor and what the engine keeps of it; a restart makes a new one."""

    handle: Any
    name: str  # its name in the cluster
    info: ActorInfo
    clock: ClockOffset
    seq: int = 0  # the next input's number
    thread: threading.Thread | None = None
    error: str = ""
    closing: bool = False
    dead: bool = False


class RayExecutor(Executor):
    """The stage loop in a Ray actor; `placement` says which resources (and node) it takes."""

    _a: _Actor | None = None
    _starting: Any = None  # the handle of an actor being started

    def __init__(
        self, *args: Any, placement: RayPlacement | None = None, bundle: Bundle | None = None, **kwargs: Any
    ) -> None:
        """`bundle`: the stage's place in its replica's placement group (`runtime.ray_placement`), if it has one."""
        super().__init__(*args, **kwargs)
        self.placement, self.bundle = placement or RayPlacement(), bundle
        self._call_lock = threading.Lock()

    def start(self, timeout_s: float | None = None) -> None:
        timeout = self.start_timeout_s if timeout_s is None else timeout_s
        name = f"{ACTOR_PREFIX}{os.getpid()}-{self.name}-{secrets.token_hex(4)}"
        with self._state_lock:
            self._check_open()
            handle = self._starting = _RemoteStageActor.options(
                num_cpus=self.placement.num_cpus,
                num_gpus=self.placement.num_gpus,
                resources=actor_resources(self.placement),
                scheduling_strategy=self.bundle.strategy() if self.bundle is not None else None,
                name=name,
            ).remote(self.factory, self.name, self.threads, ray.util.get_node_ip_address())
        try:
            info = ray.get(handle.ready.remote(), timeout=timeout)
            same_node = info.node_ip == ray.util.get_node_ip_address()
            clock = ray_clock.estimate(lambda: ray.get(handle.clock.remote(), timeout=timeout), same_node)
            handle.set_offset.remote(clock.to_engine(0))
            problem = None
        except GetTimeoutError:
            problem = f"did not start within {timeout:.0f} s"
        except RayError as exc:
            problem = f"failed to start:\n{exc}"
        with self._state_lock:
            self._starting = None
            closed = self._closed
            if problem is None and not closed:
                a = self._a = _Actor(handle, name, info, clock)
                a.thread = threading.Thread(target=self._receive, args=(a,), name=f"{self.name}-receiver", daemon=True)
                a.thread.start()
                self._record_clock(a)
                return
        self._kill(handle, None)
        raise ExecutorError(f"{self.name} stage is closed" if closed else f"{self.name} actor {problem}")

    @property
    def alive(self) -> bool:
        a = self._a
        return a is not None and not a.dead

    @property
    def pid(self) -> int | None:
        """The actor's pid on its node (on another node, not one this process can signal)."""
        a = self._a
        return a.info.pid if a is not None else None

    @property
    def actor_name(self) -> str | None:
        a = self._a
        return a.name if a is not None else None

    @property
    def clock(self) -> ClockOffset | None:
        a = self._a
        return a.clock if a is not None else None

    def submit(self, message: StageInput) -> None:
        a = self._a
        if a is None or a.dead:
            raise ExecutorError(f"{self.name} actor is not running")
        with self._lock:  # numbered in the order submitted: the actor hands them to the loop in that order
            seq = a.seq
            pack(message, get_recorder(), a.clock.to_theirs(0), lambda packed: a.handle.submit.remote(seq, packed))
            a.seq += 1

    def call(self, request: Request, timeout_s: float = 60.0) -> Reply | None:
        a = self._a
        if a is None or a.dead:
            return None
        name = type(request).__name__
        with self._call_lock:
            try:
                if isinstance(request, DrainEvents):  # refreshed before each drain: a long run drifts
                    a.clock = ray_clock.estimate(
                        lambda: ray.get(a.handle.clock.remote(), timeout=timeout_s), not a.clock.applied
                    )
                    a.handle.set_offset.remote(a.clock.to_engine(0))  # the stamps on its outputs follow
                    self._record_clock(a)
                reply = ray.get(a.handle.call.remote(request), timeout=timeout_s)
            except GetTimeoutError:
                raise ExecutorError(f"{self.name} actor did not answer {name} within {timeout_s:.0f} s") from None
            except RayError:
                return None  # died meanwhile
        if isinstance(reply, ControlFailed):
            raise ExecutorError(f"{self.name} actor: {name} failed: {reply.message}")
        if isinstance(reply, Events) and a.clock.applied:
            batch = EventBatch.from_bytes(reply.data)
            batch.events = [e._replace(start_ns=a.clock.to_engine(e.start_ns)) for e in batch.events]
            reply = Events(batch.to_bytes())
        return reply

    def _record_clock(self, a: _Actor) -> None:
        """The offset and its error bound, into the engine's events (and so into every run's timeline)."""
        c = a.clock
        get_recorder().instant(
            CLOCK_OFFSET, ENGINE, stage=self.name, node=a.info.node_ip, pid=a.info.pid, offset_ns=c.offset_ns,
            error_ns=c.error_ns, applied=c.applied,
        )  # fmt: skip

    def _stop(self, grace_s: float) -> None:
        """Stop the loop (within `grace_s`), then kill the actor and wait for its process. An actor still starting is
        killed: the `start` waiting for it then fails."""
        with self._state_lock:
            a, self._a = self._a, None
            starting = self._starting
        if starting is not None:
            ray.kill(starting, no_restart=True)
        if a is None:
            return
        a.closing = True
        if not a.dead:
            try:
                ray.get(a.handle.stop.remote(), timeout=grace_s)
            except RayError:  # stuck in a step, or gone: killed below either way
                pass
        self._kill(a.handle, a.info)
        if a.thread is not None and a.thread is not threading.current_thread():
            a.thread.join(timeout=DEFAULT_GRACE_S)  # the actor is gone: its long poll fails and the thread ends

    @staticmethod
    def _kill(handle: Any, info: ActorInfo | None) -> None:
        """Kill the actor; on this node, wait until its process is gone (Ray's kill does not wait)."""
        try:
            ray.kill(handle, no_restart=True)
        except RayError:
            pass
        if info is not None and info.node_ip == ray.util.get_node_ip_address():
            try:
                psutil.Process(info.pid).wait(timeout=KILL_WAIT_S)
            except (psutil.NoSuchProcess, psutil.TimeoutExpired):
                pass

    def _receive(self, a: _Actor) -> None:
        """Deliver the actor's outputs until it goes; then, unless we are closing it, report the death."""
        rec = get_recorder()
        reason = "ended its loop"
        while True:
            try:
                batch: list[Packed | WorkerError] | None = ray.get(a.handle.outputs.remote())
            except RayError as exc:
                reason = _death_reason(exc)
                break
            if batch is None:
                break
            for item in batch:
                if isinstance(item, WorkerError):
                    a.error = item.text
                else:
                    self._deliver(unpack(item, rec))
            if a.error:
                reason = "raised in a step"
                break
        a.dead = True
        if not a.closing:
            self._kill(a.handle, a.info)
            text = f"{self.name} actor (pid {a.info.pid} on {a.info.node_ip}) {reason}"
            self.on_death(text + (f":\n{a.error}" if a.error else ""))


def _death_reason(exc: RayError) -> str:
    """Ray's account of the death, first line only (the rest is its own traceback)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return "died: " + (lines[0] if lines else type(exc).__name__)
