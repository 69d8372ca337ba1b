"""The `ray` executor's actor: builds its stage in its own process (on whichever node Ray placed it), then runs the
one stage loop (`runtime.loop`) on a thread of its own, as an `mp` worker does.

Ray calls arrive on the actor's other threads (a threaded actor): `submit` puts inputs in the loop's inbox, in the
order the engine numbered them (Ray does not promise order for a threaded actor, so the actor restores it); `call`
puts a control question there too, served between two steps; `outputs` blocks until the loop has emitted something
and returns all of it (the engine's receiver keeps one such call waiting: a long poll, no polling loop); `stop`
ends the loop. A step that raises ends the loop and is reported by `outputs` (`WorkerError` with the traceback)."""

from __future__ import annotations

import os
import queue
import socket
import threading
import traceback
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from engine.runtime.control import Reply, Request, WorkerError
from engine.runtime.control_server import ControlServer
from engine.runtime.loop import STOP, StageFactory, stage_loop
from engine.runtime.ray_wire import Packed, pack, unpack
from engine.stages.messages import StageOutput
from telemetry.events import now_ns

CONCURRENCY = 8  # Ray calls served at once: one `outputs` long poll, submits, a control call, the clock


@dataclass(frozen=True)
class ActorInfo:
    """Where the actor runs: its process and its node."""

    pid: int
    host: str
    node_ip: str


class StageActor:
    """One stage in a Ray actor. Decorated with `ray.remote` by the executor (this module does not import Ray)."""

    def __init__(self, factory: StageFactory, name: str, threads: int, engine_node: str) -> None:
        """`engine_node`: the engine's node IP; on another node the actor's process (its track group in the
        timeline) is named with its own node's too."""
        import ray
        import torch

        from telemetry.events import get_recorder, set_process_name

        self.info = ActorInfo(os.getpid(), socket.gethostname(), ray.util.get_node_ip_address())
        set_process_name(name if self.info.node_ip == engine_node else f"{name} on {self.info.node_ip}")
        torch.set_num_threads(threads)
        self.rec = get_recorder()
        self.server = ControlServer(name, self.rec)
        self.offset_ns = 0  # the engine's clock minus ours (`set_offset`), put on the outputs' sent_ns
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[Packed | WorkerError | None] = queue.SimpleQueue()
        self._order_lock = threading.Lock()
        self._next_seq, self._ended = 0, False
        self._early: dict[int, Packed] = {}
        stage = factory()  # a factory that raises fails the actor's creation, with its traceback
        self._thread = threading.Thread(target=self._run, args=(stage,), name=f"{name}-stage", daemon=True)
        self._thread.start()

    def ready(self) -> ActorInfo:
        return self.info

    def clock(self) -> int:
        """This process's clock now: one sample of the engine's round-trip exchange (`runtime.ray_clock`)."""
        return now_ns()

    def set_offset(self, offset_ns: int) -> None:
        self.offset_ns = offset_ns

    def submit(self, seq: int, packed: Packed) -> None:
        """Input number `seq` from the engine; handed to the loop once every earlier one was."""
        with self._order_lock:
            self._early[seq] = packed
            while self._next_seq in self._early:
                self._inbox.put(self._early.pop(self._next_seq))
                self._next_seq += 1

    def call(self, request: Request) -> Reply:
        """A control question, answered by the loop between two steps (or here, once the loop has ended)."""
        future: Future[Reply] = Future()
        with self._order_lock:
            if self._ended:
                return self.server.serve(request)
            self._inbox.put((request, future))
        return future.result()

    def outputs(self) -> list[Packed | WorkerError] | None:
        """What the loop emitted since the last call (waits for at least one); None once the loop has ended."""
        batch: list[Packed | WorkerError] = []
        item = self._outbox.get()
        while item is not None:
            batch.append(item)
            try:
                item = self._outbox.get_nowait()
            except queue.Empty:
                return batch
        self._outbox.put(None)  # the end stays the answer to every later call
        return batch or None

    def stop(self) -> None:
        """End the loop (the actor itself is then killed by the engine) and wait for it."""
        self._inbox.put(STOP)
        self._thread.join()

    def _get(self, block: bool) -> Any:
        while True:
            try:
                item = self._inbox.get(block)
            except queue.Empty:
                return None
            if item is STOP:
                return STOP
            if isinstance(item, tuple):  # a control question and where its answer goes
                request, future = item
                future.set_result(self.server.serve(request))
                continue
            return unpack(item, self.rec)

    def _emit(self, out: StageOutput) -> None:
        self._outbox.put(pack(out, self.rec, self.offset_ns))

    def _run(self, stage: Any) -> None:
        try:
            stage_loop(stage, self._get, self._emit)
        except BaseException:
            self._outbox.put(WorkerError("step", traceback.format_exc()))
        self._outbox.put(None)
        with self._order_lock:
            self._ended = True
        while True:  # answer what was asked meanwhile, so that no `call` waits for a loop that has ended
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, tuple):
                item[1].set_result(self.server.serve(item[0]))
