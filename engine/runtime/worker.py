"""The `mp` worker process: builds its stage, says `Ready`, then runs the stage loop (`runtime.loop`) on the inputs
it reads from the engine (and from direct links, `runtime.link`), serving control requests between two steps."""

from __future__ import annotations

import logging
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any

from engine.runtime import link
from engine.runtime.control import AttachInput, AttachOutput, Ready, Request, Stop, WorkerError
from engine.runtime.control_server import ControlServer
from engine.runtime.loop import STOP, StageFactory, stage_loop
from engine.runtime.transport import PeerGone, Receiver, Sender, ShmRing, TransportError
from engine.stages.messages import Cancel, CodeChunk, Failed, StageOutput
from engine.stages.stage import Stage
from telemetry.events import Recorder

log = logging.getLogger(__name__)


class Worker(ControlServer):
    """The worker's side of its channels: the engine's inbox and outbox, the links it reads from (`upstream`), and
    the link its code chunks go down (`downstream`, None: they go back to the engine)."""

    def __init__(self, stage: Stage, name: str, inbox: Receiver, outbox: Sender, rec: Recorder) -> None:
        super().__init__(name, rec)
        self.stage, self.inbox, self.outbox = stage, inbox, outbox
        self.upstream: dict[Connection, Receiver] = {}
        self.downstream: Sender | None = None

    def get(self, block: bool) -> Any:
        """The next stage input (the engine's first), STOP, or None when not blocking and nothing is pending."""
        while True:
            sources = [self.inbox.conn, *self.upstream]
            ready = wait(sources, timeout=None if block else 0)
            if not ready:
                return None
            conn = min(ready, key=sources.index)
            if conn is not self.inbox.conn:
                try:
                    return self.upstream[conn].recv()
                except (EOFError, OSError):  # its writer is gone (or switched to a newer link): all of it was read
                    pass
                link.close_end(self.upstream.pop(conn))  # past the handler: see `emit`
                continue
            try:
                msg = self.inbox.recv()
            except (EOFError, OSError):
                return STOP  # the engine closed the pipe or died
            if isinstance(msg, Stop):
                return STOP
            if not isinstance(msg, Request):
                return msg
            self.outbox.send(self.serve(msg))

    def serve_more(self, request: Request) -> None:
        """The worker's own questions: its ends of direct links."""
        match request:
            case AttachInput():
                end = link.attach_input(request, self.inbox.conn, self.rec)
                self.upstream[end.conn] = end
            case AttachOutput():
                end = link.attach_output(request, self.inbox.conn, self.rec)
                if self.downstream is not None:
                    link.close_end(self.downstream)
                self.downstream = end
            case _:
                super().serve_more(request)

    def emit(self, out: StageOutput) -> None:
        """A stage output to the engine, or a code chunk down the direct link when there is one."""
        if isinstance(out, CodeChunk) and self.downstream is not None:
            consumer_gone = False
            try:
                self.downstream.send(out)
                return
            except (PeerGone, OSError):  # the consumer died: the engine fails what it held; back to the star path
                consumer_gone = True
            except TransportError as exc:  # no room in time, or a chunk larger than the ring: this request fails
                log.warning("request %s: could not hand a chunk to the next stage: %s", out.request_id, exc)
                self.stage.submit(Cancel(out.request_id))
                out = Failed(out.request_id, "code2wav: the stage could not take its audio codes")
            if consumer_gone:  # closed past the handler: the failed send's frames, which view the ring, are freed
                link.close_end(self.downstream)  # by then, and an exported buffer cannot be unmapped
                self.downstream = None
        self.outbox.send(out)

    def close(self) -> None:
        for end in [*self.upstream.values(), *([self.downstream] if self.downstream else [])]:
            link.close_end(end)


def worker_main(
    factory: StageFactory,
    name: str,
    threads: int,
    in_conn: Connection,
    out_conn: Connection,
    in_ring: str,
    out_ring: str,
    ring_bytes: int,
    in_bell: Connection,
    out_bell: Connection,
    send_timeout_s: float,
) -> None:
    """The `mp` worker's entry point (spawn): build the stage here, say ready (or send the traceback), then loop.
    `in_conn` is a socket (it also carries the file descriptors of direct links); `in_bell` is rung when input space
    is freed; `out_bell` is waited on when the output ring is full."""
    import torch

    from telemetry.events import get_recorder, set_process_name

    set_process_name(name)
    torch.set_num_threads(threads)
    rec = get_recorder()
    rings = [ShmRing(ring_bytes, in_ring), ShmRing(ring_bytes, out_ring)]
    inbox = Receiver(in_conn, rings[0], in_bell, rec)
    outbox = Sender(out_conn, rings[1], out_bell, rec, send_timeout_s)
    worker: Worker | None = None
    try:
        try:
            stage = factory()
        except BaseException:
            outbox.send(WorkerError("start", traceback.format_exc()))
            return
        outbox.send(Ready())
        worker = Worker(stage, name, inbox, outbox, rec)
        try:
            stage_loop(stage, worker.get, worker.emit)
        except BaseException:
            outbox.send(WorkerError("step", traceback.format_exc()))
            raise SystemExit(1) from None
    finally:
        if worker is not None:
            worker.close()
        for ring in rings:
            ring.close()
        for conn in (in_conn, out_conn, in_bell, out_bell):
            conn.close()
