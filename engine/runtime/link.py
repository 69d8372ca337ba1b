"""The direct path between two `mp` workers: in `mp`-`mp`, the talker's code chunks go straight to code2wav over a
ring of their own, so a chunk crosses one ring, not two (talker -> engine -> code2wav).

The engine makes each link (a `ShmRing`, a header pipe, a doorbell pipe) and hands its ends to the two running
workers (`AttachInput`, `AttachOutput`; the file descriptors follow the message on the worker's control socket). Once
both have answered, the engine closes its copies and unlinks the segment's name: the workers keep their mappings, so
nothing is left in /dev/shm even if they are killed. A link lives as long as its two workers: when either is
replaced, the engine links the survivor and the new worker (`connect`, once the new one is up). The consumer reads
every link it was given until its writer closes it, so the chunks a replaced talker sent before it went are still
decoded; the producer drops a link whose reader is gone and sends its chunks back to the engine (the star path)
until it is given a new one.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
from collections.abc import Sequence
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from engine.runtime.control import AttachInput, AttachOutput, Done
from engine.runtime.transport import Receiver, Sender, ShmRing
from telemetry.events import Recorder

if TYPE_CHECKING:
    from engine.runtime.mp_executor import MpExecutor


def connect(producer: MpExecutor, consumer: MpExecutor, ring_bytes: int, send_timeout_s: float) -> bool:
    """A new link from the producer's worker to the consumer's; False if either was not there to take its end."""
    ctx = mp.get_context("spawn")
    ring = ShmRing(ring_bytes)
    headers_r, headers_w = ctx.Pipe(duplex=False)
    bell_r, bell_w = ctx.Pipe(duplex=False)
    try:
        if consumer.call(AttachInput(ring.name, ring_bytes), fds=(headers_r.fileno(), bell_w.fileno())) is None:
            return False
        attach = AttachOutput(ring.name, ring_bytes, send_timeout_s)
        return isinstance(producer.call(attach, fds=(headers_w.fileno(), bell_r.fileno())), Done)
    finally:  # the workers hold their own copies now (or nothing, if they are gone)
        for conn in (headers_r, headers_w, bell_r, bell_w):
            conn.close()
        ring.unlink()


def send_fds(conn: Connection, fds: Sequence[int]) -> None:
    """File descriptors to the process at the other end of `conn` (a socket), right behind the last message."""
    with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        reduction.sendfds(sock, list(fds))


def _receive_fds(conn: Connection, n: int) -> list[int]:
    with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        return reduction.recvfds(sock, n)


def attach_input(msg: AttachInput, control: Connection, rec: Recorder) -> Receiver:
    """The consumer's end of a link whose fds follow `msg` on `control`."""
    headers, bell = _receive_fds(control, 2)
    ring = ShmRing(msg.ring_bytes, msg.ring)
    return Receiver(Connection(headers, writable=False), ring, Connection(bell, readable=False), rec)


def attach_output(msg: AttachOutput, control: Connection, rec: Recorder) -> Sender:
    """The producer's end of a link whose fds follow `msg` on `control`."""
    headers, bell = _receive_fds(control, 2)
    ring = ShmRing(msg.ring_bytes, msg.ring)
    return Sender(Connection(headers, readable=False), ring, Connection(bell, writable=False), rec, msg.send_timeout_s)


def close_end(end: Sender | Receiver) -> None:
    """Drop this process's end of a link: its pipes and its mapping of the ring."""
    end.conn.close()
    end.doorbell.close()
    end.ring.close()
