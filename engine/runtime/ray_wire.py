"""How a stage message crosses to or from a `ray` actor: the one wire form (`transport.encode`/`decode`, the classes
of `messages.WIRE`) with its tensors as numpy arrays, which Ray puts in its object store (read without a copy on the
same node) when they are large and inlines in the call when they are small.

The receiver takes one copy of a read-only array (one out of the store, as `mp` takes one out of its ring), so a
message's tensors are its own to change. `sent_ns` is on the receiver's clock: the sender adds the clock offset it
knows (`runtime.ray_clock`), so a HANDOFF span compares directly with the receiver's other events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.runtime.transport import decode, encode
from telemetry.events import COPY, HANDOFF, SERIALIZE, TRANSPORT, Recorder, now_ns


@dataclass(frozen=True)
class Packed:
    """One wire message as it travels through Ray."""

    name: str
    fields: dict[str, Any]
    arrays: dict[str, tuple[np.ndarray, str]]  # field -> (its bytes as numpy, the torch dtype's name)
    sent_ns: int  # on the receiver's clock


def pack(msg: Any, rec: Recorder, offset_ns: int = 0, send: Callable[[Packed], object] | None = None) -> Packed:
    """`msg` in its Ray form; `offset_ns`: the receiver's clock minus ours. `send`: the Ray call that takes it, timed
    with the packing (Ray serialises its arguments inside the call). Records SERIALIZE."""
    start = now_ns()
    name, fields, tensors = encode(msg)
    arrays = {}
    for field, t in tensors:
        t = t.detach().cpu()
        arrays[field] = ((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy(), str(t.dtype))
    packed = Packed(name, fields, arrays, start + offset_ns)
    if send is not None:
        send(packed)
    request = getattr(msg, "request_id", None)
    if request is not None or tensors:  # a control message is not a hop of the data path
        nbytes = sum(a.nbytes for a, _ in arrays.values())
        rec.record_span(SERIALIZE, TRANSPORT, start, request=request, bytes=nbytes)
    return packed


def unpack(packed: Packed, rec: Recorder) -> Any:
    """The message again, its tensors owned by torch. Records COPY (when a read-only array was copied) and HANDOFF
    (from `sent_ns` to now)."""
    tensors, copied, nbytes = {}, 0, 0
    t0 = now_ns()
    for field, (array, dtype) in packed.arrays.items():
        if not array.flags.writeable:
            array = array.copy()
            copied += array.nbytes
        t = torch.from_numpy(array)
        tensors[field] = t.view(torch.bfloat16) if dtype == str(torch.bfloat16) else t
        nbytes += array.nbytes
    msg = decode(packed.name, dict(packed.fields), tensors)
    request = getattr(msg, "request_id", None)
    if request is None and not packed.arrays:
        return msg
    if copied:
        rec.record_span(COPY, TRANSPORT, t0, request=request, bytes=copied)
    rec.record_span(HANDOFF, TRANSPORT, packed.sent_ns, request=request, bytes=nbytes, message=packed.name)
    return msg
