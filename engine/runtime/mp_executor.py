"""`MpExecutor`: the stage loop in a spawned worker process, fed over pipes with small headers while tensors cross
through two shared-memory rings (`transport`). A receiver thread per worker blocks on the output pipe and the process
sentinel together: it delivers outputs as they come and sees a death at once (no polling).

A worker's exit status is read only after the process is joined: its pipe reaches EOF, and its sentinel fires, a
moment before the kernel has its status to report."""

from __future__ import annotations

import multiprocessing as mp
import queue
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from engine.runtime.control import ControlFailed, Ready, Reply, Request, Stop, WorkerError
from engine.runtime.executor import DEFAULT_GRACE_S, Executor, ExecutorError
from engine.runtime.link import send_fds
from engine.runtime.transport import PeerGone, Receiver, Sender, ShmRing
from engine.runtime.worker import worker_main
from engine.stages.messages import StageInput, StageOutput
from telemetry.events import get_recorder

EXIT_WAIT_S = 10.0  # how long a worker that closed its pipe may take to exit before it is stopped by force
KILL_WAIT_S = 2.0  # after SIGTERM, before SIGKILL


@dataclass
class _Worker:
    """One worker process and everything that belongs to it; a restart makes a new one."""

    proc: Any
    pid: int
    sender: Sender
    receiver: Receiver
    rings: tuple[ShmRing, ShmRing]
    conns: list[Connection]
    replies: queue.SimpleQueue[Reply | None] = field(default_factory=queue.SimpleQueue)  # to `call`
    thread: threading.Thread | None = None
    error: str = ""
    closing: bool = False


def _exit_reason(proc: Any) -> str:
    """How a worker ended, once it is gone: joined (bounded) first, so that its exit status is known."""
    proc.join(timeout=EXIT_WAIT_S)
    code = proc.exitcode
    if code is None:
        return "stopped answering (its pipe closed, the process still runs)"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class MpExecutor(Executor):
    """The stage loop in a spawned worker process; tensors cross through two shared-memory rings."""

    _w: _Worker | None = None  # the running worker
    _starting: _Worker | None = None  # the worker being started, until it says ready or fails
    _call_lock: threading.Lock  # one control question at a time (set in start)

    def start(self, timeout_s: float | None = None) -> None:
        timeout = self.start_timeout_s if timeout_s is None else timeout_s
        self._call_lock = threading.Lock()
        with self._state_lock:
            self._check_open()
            w = self._starting = self._spawn()
        ready = self._await_ready(w, timeout)
        with self._state_lock:
            self._starting = None
            closed = self._closed
            if ready is None and not closed:
                w.thread = threading.Thread(target=self._receive, args=(w,), name=f"{self.name}-receiver", daemon=True)
                w.thread.start()
                self._w = w
                return
        w.closing = True
        self._stop_worker(w, 0.0)
        raise ExecutorError(f"{self.name} stage is closed" if closed else f"{self.name} worker {ready}")

    def _spawn(self) -> _Worker:
        """A new worker process with its pipes and rings, started; it builds its stage and then says ready."""
        ctx = mp.get_context("spawn")
        rings = (ShmRing(self.ring_bytes), ShmRing(self.ring_bytes))
        in_w, in_r = ctx.Pipe()  # headers (and a direct link's fds), engine -> worker: a socket pair
        out_r, out_w = ctx.Pipe(duplex=False)  # headers, worker -> engine
        in_bell_r, in_bell_w = ctx.Pipe(duplex=False)  # worker rings: input space freed
        out_bell_r, out_bell_w = ctx.Pipe(duplex=False)  # engine rings: output space freed
        args = (
            self.factory,
            self.name,
            self.threads,
            in_r,
            out_w,
            rings[0].name,
            rings[1].name,
            self.ring_bytes,
            in_bell_w,
            out_bell_r,
            self.send_timeout_s,
        )
        proc = ctx.Process(target=worker_main, args=args, name=f"voxtrace-{self.name}", daemon=True)
        rec = get_recorder()
        w = _Worker(
            proc,
            -1,
            Sender(in_w, rings[0], in_bell_r, rec, self.send_timeout_s),
            Receiver(out_r, rings[1], out_bell_w, rec),
            rings,
            [in_w, out_r, in_bell_r, out_bell_w],
        )
        try:
            proc.start()
        except BaseException:
            self._release(w)
            raise
        finally:
            for conn in (in_r, out_w, in_bell_w, out_bell_r):  # the worker's ends: only it holds them now
                conn.close()
        w.pid = proc.pid
        return w

    def _await_ready(self, w: _Worker, timeout_s: float) -> str | None:
        """None once the worker said ready; else why it did not (its error, its exit status, or the timeout)."""
        if not wait([w.receiver.conn, w.proc.sentinel], timeout=timeout_s):
            return f"did not start within {timeout_s:.0f} s"
        try:
            ready = w.receiver.recv()
        except (EOFError, OSError):
            return f"{_exit_reason(w.proc)} during start-up"
        if isinstance(ready, Ready):
            return None
        if isinstance(ready, WorkerError):
            return f"failed to start:\n{ready.text}"
        return f"sent {ready!r} instead of saying ready"

    @property
    def alive(self) -> bool:
        w = self._w
        try:
            return w is not None and w.proc.is_alive()
        except ValueError:  # closed by another thread meanwhile
            return False

    @property
    def pid(self) -> int | None:
        """The running worker's pid, or while one starts, the starting one's (so that it can be watched)."""
        w = self._w or self._starting
        return w.pid if w is not None else None

    def submit(self, message: StageInput) -> None:
        """Raises ExecutorError if the worker is gone (before or while waiting for ring space), PayloadTooLarge if
        the message's tensors exceed the ring, TransportError if the worker does not free space in time."""
        w = self._w
        if w is None or not self.alive:
            raise ExecutorError(f"{self.name} worker is not running")
        with self._lock:
            try:
                w.sender.send(message, abort=(w.proc.sentinel,))
            except PeerGone as exc:
                raise ExecutorError(f"{self.name} worker died while a submit waited for ring space") from exc
            except (EOFError, OSError, ValueError) as exc:  # ValueError: closed meanwhile
                raise ExecutorError(f"{self.name} worker is gone: {exc}") from exc

    def call(self, request: Request, timeout_s: float = 60.0, fds: Sequence[int] = ()) -> Reply | None:
        """See `Executor.call`; `fds`: file descriptors sent right behind the request (a direct link's ends)."""
        w = self._w
        if w is None or not w.proc.is_alive():
            return None
        name = type(request).__name__
        with self._call_lock:  # one question at a time, so replies pair with questions
            with self._lock:
                try:
                    w.sender.send(request)
                    if fds:
                        send_fds(w.sender.conn, fds)
                except OSError:
                    return None  # died meanwhile
            try:
                reply = w.replies.get(timeout=timeout_s)
            except queue.Empty:
                raise ExecutorError(f"{self.name} worker did not answer {name} within {timeout_s:.0f} s") from None
        if isinstance(reply, ControlFailed):
            raise ExecutorError(f"{self.name} worker: {name} failed: {reply.message}")
        return reply

    def _stop(self, grace_s: float) -> None:
        """Stop the running worker (asked to stop, then terminated, then killed) and release it. A worker still
        starting is killed: the `start` waiting for it then fails and releases it."""
        with self._state_lock:
            w, self._w = self._w, None
            if self._starting is not None:
                self._starting.proc.kill()
        if w is None:
            return
        w.closing = True
        if w.proc.is_alive() and self._lock.acquire(timeout=1.0):
            try:
                w.sender.send(Stop())
            except OSError:
                pass
            finally:
                self._lock.release()
        self._stop_worker(w, grace_s)

    def _stop_worker(self, w: _Worker, grace_s: float) -> None:
        w.proc.join(timeout=grace_s)
        if w.proc.is_alive():
            w.proc.terminate()
            w.proc.join(timeout=KILL_WAIT_S)
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join()
        if w.thread is not None and w.thread is not threading.current_thread():
            w.thread.join(timeout=DEFAULT_GRACE_S)  # the process is gone: it delivers what is left and ends
        self._release(w)

    @staticmethod
    def _release(w: _Worker) -> None:
        for conn in w.conns:
            conn.close()
        for ring in w.rings:
            ring.unlink()
        if w.proc.pid is not None:
            w.proc.close()

    def _receive(self, w: _Worker) -> None:
        """Deliver the worker's outputs until it goes; then, unless we are closing it, report the death."""
        conn = w.receiver.conn
        while True:
            ready = wait([conn, w.proc.sentinel])
            if conn not in ready:
                break  # dead, and nothing left to read
            try:
                msg = w.receiver.recv()
            except (EOFError, OSError):
                break
            if isinstance(msg, StageOutput):
                self._deliver(msg)
            elif isinstance(msg, WorkerError):
                w.error = msg.text
            else:
                w.replies.put(msg)
        w.replies.put(None)  # wake a `call` waiting on a dead worker
        if not w.closing:
            reason = f"{self.name} worker (pid {w.pid}) {_exit_reason(w.proc)}"
            self.on_death(reason + (f":\n{w.error}" if w.error else ""))
