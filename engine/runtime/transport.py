"""The one way messages cross a process boundary (stage messages and the control plane alike, every class
registered in `messages.WIRE`): a small header over a pipe, tensors through shared memory.

Why not pickle the message: pickling a tensor per chunk allocates and copies it twice and pushes every byte through
the pipe (vllm-omni's connector even makes a segment per chunk, behind an fcntl lock). Here each direction has one
preallocated segment used as a ring, single producer / single consumer: the writer copies a message's tensor bytes
in at the head, the header says where they are (offset, nbytes, dtype, shape), the reader copies them out and
publishes its tail, so the space is reused. The header pipe orders the ring: messages are read in the order written.

A full ring blocks the writer on a doorbell pipe that the reader rings after each release (event-driven; a timeout
raises; so does the reader going away, seen as the doorbell's end of file). A message larger than the whole ring is
refused with both sizes. Tensors arrive on the CPU. The same pair of ends serves the engine <-> worker directions and
the direct link between two workers (`runtime.link`).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import secrets
import struct
from collections.abc import Sequence
from multiprocessing import shared_memory
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np
import torch
from torch import Tensor

import engine.runtime.control  # noqa: F401  (registers the control messages)
from engine.stages.messages import WIRE
from telemetry.events import COPY, HANDOFF, SERIALIZE, TRANSPORT, WAIT, Recorder, now_ns

DEFAULT_RING_BYTES = 32 << 20
RING_PREFIX = "voxtrace_ring_"  # /dev/shm/voxtrace_ring_<pid of the engine>_<random>
ALIGN = 64  # each message's block starts on a cache line
_CONTROL_BYTES = 64  # the segment's first cache line holds the reader's tail (uint64, bytes consumed so far)
_PLAIN = (type(None), bool, int, float, str, bytes)
_DTYPES: dict[str, torch.dtype] = {
    str(d): d
    for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16)
    + (torch.int8, torch.uint8, torch.bool, torch.complex64)
}

TensorDesc = tuple[str, int, int, str, tuple[int, ...]]  # (field, offset in the ring, nbytes, dtype, shape)
Header = tuple[str, dict[str, Any], tuple[TensorDesc, ...], int, int]  # (type, fields, tensors, ring_end, sent_ns)


class TransportError(RuntimeError):
    """A message that could not be moved: no space in time, the peer gone, a field of an unsupported type."""


class PayloadTooLarge(TransportError):
    """A message whose tensors exceed the whole ring: raise the stage's ring size."""


class PeerGone(TransportError):
    """The other side went away while the writer waited for space."""


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def encode(msg: Any) -> tuple[str, dict[str, Any], list[tuple[str, Tensor]]]:
    """A wire message (`messages.WIRE`) -> (type name, plain fields, tensor fields). Nested wire dataclasses
    (SamplingParams) become a dict with `__type__`; anything else that is not plain is refused, so nothing big is ever
    pickled by accident."""
    name = type(msg).__name__
    if WIRE.get(name) is not type(msg):
        raise TransportError(f"{name} is not a wire message; known: {', '.join(WIRE)}")
    fields: dict[str, Any] = {}
    tensors: list[tuple[str, Tensor]] = []
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if isinstance(value, Tensor):
            tensors.append((f.name, value))
        elif isinstance(value, _PLAIN):
            fields[f.name] = value
        elif WIRE.get(type(value).__name__) is type(value):
            fields[f.name] = {"__type__": type(value).__name__, **dataclasses.asdict(value)}
        else:
            raise TransportError(f"{name}.{f.name}: cannot send a {type(value).__name__}")
    return name, fields, tensors


def decode(name: str, fields: dict[str, Any], tensors: dict[str, Tensor]) -> Any:
    """The inverse of `encode`."""
    for key, value in fields.items():
        if isinstance(value, dict) and "__type__" in value:
            value = dict(value)
            fields[key] = WIRE[value.pop("__type__")](**value)
    return WIRE[name](**fields, **tensors)


def _copy_in(dst: np.ndarray, t: Tensor) -> None:
    """A tensor's bytes into the ring: through numpy on the CPU (a third of torch's per-call cost for small
    chunks), through torch for what numpy cannot hold (bfloat16) or another device (a device-to-host copy)."""
    t = t.detach()
    if t.device.type == "cpu" and t.dtype != torch.bfloat16:
        dst[:] = t.numpy().reshape(-1).view(np.uint8)
    else:
        torch.from_numpy(dst).copy_(t.contiguous().reshape(-1).view(torch.uint8))


class ShmRing:
    """One shared-memory segment: the reader's tail in the first cache line, then `capacity` data bytes.
    The engine creates (and unlinks) both rings of a worker; the worker attaches by name."""

    def __init__(self, capacity: int = DEFAULT_RING_BYTES, name: str | None = None):
        self.capacity = capacity
        create = name is None
        if create:  # named after the creating process, so a leak can be traced to its owner
            name = f"{RING_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
        self.shm = shared_memory.SharedMemory(name=name, create=create, size=_CONTROL_BYTES + capacity if create else 0)
        self.name = self.shm.name
        self.data: np.ndarray | None = np.frombuffer(self.shm.buf, np.uint8, count=capacity, offset=_CONTROL_BYTES)
        if name is None:
            self.tail = 0

    @property
    def tail(self) -> int:
        return struct.unpack_from("<Q", self.shm.buf, 0)[0]

    @tail.setter
    def tail(self, value: int) -> None:
        struct.pack_into("<Q", self.shm.buf, 0, value)  # one aligned 8-byte store

    def close(self) -> None:
        """Drop this process's mapping (the array view first: an exported buffer cannot be closed)."""
        if self.data is not None:
            self.data = None
            self.shm.close()

    def unlink(self) -> None:
        self.close()
        try:
            self.shm.unlink()
        except FileNotFoundError:
            pass


class Sender:
    """Writes messages into one direction: tensors into the ring, then the header down the pipe."""

    def __init__(
        self, conn: Connection, ring: ShmRing, doorbell: Connection, recorder: Recorder, timeout_s: float = 60.0
    ):
        self.conn, self.ring, self.doorbell, self.rec, self.timeout_s = conn, ring, doorbell, recorder, timeout_s
        self.head = 0  # bytes produced so far (monotonic); position in the ring is head % capacity
        self._wait_end = 0  # when the last wait for space ended
        os.set_blocking(doorbell.fileno(), False)

    def send(self, msg: Any, abort: Sequence[Any] = ()) -> int:
        """Send one wire message (a stage or control message); blocks (event-driven) while the ring is full.
        `abort`: waitables (a process sentinel) that end the wait early. Returns the payload bytes. HANDOFF starts
        here (`sent_ns`)."""
        sent_ns = start = now_ns()
        name, fields, tensors = encode(msg)
        sizes = [t.numel() * t.element_size() for _, t in tensors]
        total = sum(_align(n) for n in sizes)
        request = getattr(msg, "request_id", None)
        offset, ring_end = 0, self.head
        if total:
            offset, ring_end = self._reserve(total, request, abort)
            start = max(start, self._wait_end)
        descs: list[TensorDesc] = []
        for (field, t), n in zip(tensors, sizes, strict=True):
            descs.append((field, offset if n else 0, n, str(t.dtype), tuple(t.shape)))
            offset += _align(n)
        blob = pickle.dumps((name, fields, tuple(descs), ring_end, sent_ns), protocol=pickle.HIGHEST_PROTOCOL)
        t0 = now_ns()
        if request is not None or tensors:  # a control message is not a hop of the data path
            self.rec.record_span(SERIALIZE, TRANSPORT, start, t0, request=request, bytes=len(blob))
        if total:
            data = self.ring.data
            assert data is not None, "ring closed"
            for (_, t), (_, off, n, _, _) in zip(tensors, descs, strict=True):
                if n:
                    _copy_in(data[off : off + n], t)
            self.rec.record_span(COPY, TRANSPORT, t0, request=request, bytes=sum(sizes))
        self.conn.send_bytes(blob)
        return sum(sizes)

    def _reserve(self, total: int, request: str | None, abort: Sequence[Any]) -> tuple[int, int]:
        """Room for `total` contiguous bytes: (offset, ring_end). A block that would cross the end starts at 0."""
        cap = self.ring.capacity
        if total > cap:
            raise PayloadTooLarge(f"a {total}-byte message does not fit the {cap}-byte ring; raise the ring size")
        pos = self.head % cap
        start = self.head if pos + total <= cap else self.head + cap - pos
        end = start + total

        def fits() -> bool:  # unread bytes are [tail, head): the block must not reach round into them
            tail = self.ring.tail
            return tail == self.head or end - tail <= cap

        if not fits():
            t0 = now_ns()
            deadline = t0 + int(self.timeout_s * 1e9)
            while not fits():
                try:
                    while os.read(self.doorbell.fileno(), 4096):  # empty the doorbell, then look again
                        pass
                    if not fits():  # the doorbell's writer closed it: the reader is gone
                        raise PeerGone("the receiving side is gone")
                except BlockingIOError:
                    pass
                if fits():
                    break
                left = (deadline - now_ns()) / 1e9
                ready = wait([self.doorbell, *abort], timeout=max(left, 0))
                if any(a in ready for a in abort):
                    raise PeerGone("the receiving side is gone")
                if not ready and not fits():
                    raise TransportError(
                        f"no room for {total} bytes in the {cap}-byte ring after {self.timeout_s:.0f} s "
                        f"({self.head - self.ring.tail} bytes unread): the receiver is stuck"
                    )
            self._wait_end = now_ns()
            self.rec.record_span(WAIT, TRANSPORT, t0, self._wait_end, request=request, bytes=total)
        self.head = end
        return start % cap, end


class Receiver:
    """Reads one direction: header from the pipe, tensor bytes out of the ring, then frees the space."""

    def __init__(self, conn: Connection, ring: ShmRing, doorbell: Connection, recorder: Recorder):
        self.conn, self.ring, self.doorbell, self.rec = conn, ring, doorbell, recorder
        os.set_blocking(doorbell.fileno(), False)

    def recv(self) -> Any:
        """The next wire message; blocks until one comes. EOFError when the peer is gone."""
        name, fields, descs, ring_end, sent_ns = pickle.loads(self.conn.recv_bytes())
        tensors: dict[str, Tensor] = {}
        nbytes = 0
        t0 = now_ns()
        data = self.ring.data
        assert data is not None, "ring closed"
        for field, offset, n, dtype, shape in descs:
            if n:  # one copy out of the ring into memory torch then owns
                tensors[field] = torch.frombuffer(bytearray(data[offset : offset + n]), dtype=_DTYPES[dtype]).view(
                    shape
                )
            else:
                tensors[field] = torch.empty(shape, dtype=_DTYPES[dtype])
            nbytes += n
        if nbytes:
            self.ring.tail = ring_end
            try:
                os.write(self.doorbell.fileno(), b"\x01")  # a full doorbell pipe is already ringing
            except (BlockingIOError, BrokenPipeError):  # or nobody listens: the writer is gone, what it sent is read
                pass
        msg = decode(name, fields, tensors)
        request = getattr(msg, "request_id", None)
        if request is None and not descs:
            return msg  # a control message
        if nbytes:
            self.rec.record_span(COPY, TRANSPORT, t0, request=request, bytes=nbytes)
        self.rec.record_span(HANDOFF, TRANSPORT, sent_ns, request=request, bytes=nbytes, message=name)
        return msg
