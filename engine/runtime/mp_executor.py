"""`MpExecutor`: the stage loop in a spawned worker process, fed over pipes with small headers while tensors cross
through two shared-memory rings (`codec`). A receiver thread per worker blocks on the output pipe and the process
sentinel together: it delivers outputs as they come and sees a death at once (no polling)."""

from __future__ import annotations

import multiprocessing as mp
import queue
import signal
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from engine.runtime.codec import Control, PeerGone, Receiver, Sender, ShmRing
from engine.runtime.executor import Executor, ExecutorError
from engine.runtime.worker import worker_main
from engine.stages.messages import StageInput
from profiling.events import EventBatch, get_recorder
from profiling.trace import TorchTrace, torch_trace_from_dict


@dataclass
class _Worker:
    """One worker process and everything that belongs to it; a restart makes a new one."""

    proc: Any
    sender: Sender
    receiver: Receiver
    rings: tuple[ShmRing, ShmRing]
    conns: list[Connection]
    replies: queue.SimpleQueue[Control | None] = field(default_factory=queue.SimpleQueue)  # to `_ask`
    thread: threading.Thread | None = None
    error: str = ""
    closing: bool = False


def _exit_reason(proc: Any) -> str:
    code = proc.exitcode
    if code is None:
        return "is gone (exit status unknown)"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class MpExecutor(Executor):
    """The stage loop in a spawned worker process; tensors cross through two shared-memory rings."""

    _w: _Worker | None = None
    _ask_lock: threading.Lock  # one control question at a time (set in start)

    def start(self) -> None:
        self._ask_lock = threading.Lock()
        ctx = mp.get_context("spawn")
        rings = (ShmRing(self.ring_bytes), ShmRing(self.ring_bytes))
        in_r, in_w = ctx.Pipe(duplex=False)  # headers, engine -> worker
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
        ready: Any = None
        if wait([out_r, proc.sentinel], timeout=self.start_timeout_s):
            try:
                ready = w.receiver.recv()
            except (EOFError, OSError):
                pass
        if not (isinstance(ready, Control) and ready.kind == "!ready"):
            w.closing = True
            died = proc.exitcode is not None
            reason = _exit_reason(proc) if died else ""  # read before _stop closes the process object
            self._stop(w)
            if isinstance(ready, Control) and ready.kind == "!error":
                raise ExecutorError(f"{self.name} worker failed to start:\n{ready.fields['text']}")
            if not died:
                raise ExecutorError(f"{self.name} worker did not start within {self.start_timeout_s:.0f} s")
            raise ExecutorError(f"{self.name} worker {reason} during start-up")
        w.thread = threading.Thread(target=self._receive, args=(w,), name=f"{self.name}-receiver", daemon=True)
        w.thread.start()
        self._w = w

    @property
    def alive(self) -> bool:
        w = self._w
        try:
            return w is not None and w.proc.is_alive()
        except ValueError:  # closed by another thread meanwhile
            return False

    @property
    def pid(self) -> int | None:
        return self._w.proc.pid if self._w else None

    def submit(self, message: StageInput) -> None:
        """Raises ExecutorError if the worker is gone (before or while waiting for ring space), PayloadTooLarge if
        the message's tensors exceed the ring, TransportError if the worker does not free space in time."""
        w = self._w
        if w is None or not self.alive:
            raise ExecutorError(f"{self.name} worker is not running")
        self.held.submitted(message)
        with self._lock:
            try:
                w.sender.send(message, abort=(w.proc.sentinel,))
            except PeerGone as exc:
                raise ExecutorError(f"{self.name} worker died while a submit waited for ring space") from exc
            except (EOFError, OSError, ValueError) as exc:  # ValueError: closed meanwhile
                raise ExecutorError(f"{self.name} worker is gone: {exc}") from exc

    def drain_events(self, timeout_s: float = 30.0) -> EventBatch:
        """The worker's events since the last drain (served between two steps); empty if the worker is gone."""
        w = self._w
        empty = EventBatch(w.proc.pid if w else -1, self.name, [])
        reply = self._ask("!drain", timeout_s)
        return empty if reply is None else EventBatch.from_bytes(reply.fields["data"])

    def set_recording(self, enabled: bool, timeout_s: float = 30.0) -> None:
        self._ask("!recording", timeout_s, enabled=enabled)

    def start_capture(self, tb_dir: str, timeout_s: float = 60.0) -> None:
        self._ask("!capture_start", timeout_s, tb_dir=tb_dir)

    def stop_capture(self, timeout_s: float = 120.0) -> TorchTrace | None:
        reply = self._ask("!capture_stop", timeout_s)
        trace = reply.fields.get("trace") if reply is not None else None
        return torch_trace_from_dict(trace) if trace else None

    def _ask(self, kind: str, timeout_s: float, **fields: Any) -> Control | None:
        """Send a control and wait for its reply (served between two steps); None if the worker is gone."""
        w = self._w
        if w is None or not w.proc.is_alive():
            return None
        with self._ask_lock:  # one question at a time, so replies pair with questions
            with self._lock:
                w.sender.send_control(kind, **fields)
            try:
                reply = w.replies.get(timeout=timeout_s)
            except queue.Empty:
                raise ExecutorError(f"{self.name} worker did not answer {kind} within {timeout_s:.0f} s") from None
        if reply is not None and "error" in reply.fields:
            raise ExecutorError(f"{self.name} worker: {kind} failed: {reply.fields['error']}")
        return reply

    def close(self) -> None:
        """Stop the worker (politely, then terminate, then kill), join the receiver, close pipes, unlink rings."""
        w, self._w = self._w, None
        if w is not None:
            w.closing = True
            if w.proc.is_alive() and self._lock.acquire(timeout=1.0):
                try:
                    w.sender.send_control("!stop")
                except OSError:
                    pass
                finally:
                    self._lock.release()
            self._stop(w)

    def _stop(self, w: _Worker) -> None:
        if w.proc.pid is not None:
            w.proc.join(timeout=5)
            if w.proc.is_alive():
                w.proc.terminate()
                w.proc.join(timeout=2)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
        if w.thread is not None and w.thread is not threading.current_thread():
            w.thread.join(timeout=5)
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
            if not isinstance(msg, Control):
                self._deliver(msg)
            elif msg.kind in ("!events", "!reply"):
                w.replies.put(msg)
            elif msg.kind == "!error":
                w.error = msg.fields["text"]
        w.replies.put(None)  # wake an `_ask` waiting on a dead worker
        w.proc.join(timeout=1)
        if not w.closing:
            reason = f"{self.name} worker (pid {w.proc.pid}) {_exit_reason(w.proc)}"
            self.on_death(reason + (f":\n{w.error}" if w.error else ""))
