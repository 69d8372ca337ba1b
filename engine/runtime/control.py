"""The control plane between the engine and an `mp` worker: typed messages through the same transport as stage
messages (`transport.encode` / `decode`, registered with `@wire`).

Flow: the worker says `Ready` (or `WorkerError`) once its stage is built, and `WorkerError` with its traceback before
it dies of a failed step. The engine sends `Stop` to end it (no answer), and asks questions with
`Executor.call(request)`: each `Request` is served between two steps and answered by exactly one `Reply`
(`ControlFailed` when serving it raised). `AttachInput` / `AttachOutput` give a worker its end of a direct link to
another worker (`runtime.link`); the link's two file descriptors follow the message on the same socket.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.stages.messages import wire
from telemetry.capture import TorchTrace

wire(TorchTrace)


# -- the worker's life


@wire
@dataclass(frozen=True)
class Ready:
    """The worker built its stage and reads its inputs now."""


@wire
@dataclass(frozen=True)
class WorkerError:
    """The worker's stage failed to build (`where="start"`) or a step raised (`"step"`); `text` is the traceback."""

    where: str
    text: str


@wire
@dataclass(frozen=True)
class Stop:
    """Leave the loop and exit (no answer)."""


# -- questions (each answered by one Reply)


@wire
@dataclass(frozen=True)
class DrainEvents:
    """-> `Events`: the worker's recorded events since the last drain."""


@wire
@dataclass(frozen=True)
class SetRecording:
    """-> `Done`: event recording on or off in the worker's process."""

    enabled: bool


@wire
@dataclass(frozen=True)
class StartCapture:
    """-> `Done`: torch.profiler in the worker's process, writing into `tb_dir` (a TensorBoard run folder)."""

    tb_dir: str


@wire
@dataclass(frozen=True)
class StopCapture:
    """-> `CaptureStopped`: the capture's trace (None if none ran)."""


@wire
@dataclass(frozen=True)
class AttachInput:
    """-> `Done`: read stage inputs from one more link too (until its writer closes it). Followed by two fds: the
    link's header pipe (read end) and its doorbell (write end); `ring` is its shared-memory segment's name."""

    ring: str
    ring_bytes: int


@wire
@dataclass(frozen=True)
class AttachOutput:
    """-> `Done`: send code chunks over this link from now on, not back to the engine (a previous link is closed).
    Followed by two fds: the link's header pipe (write end) and its doorbell (read end)."""

    ring: str
    ring_bytes: int
    send_timeout_s: float


@wire
@dataclass(frozen=True)
class Done:
    """A request was served."""


@wire
@dataclass(frozen=True)
class Events:
    data: bytes  # `EventBatch.to_bytes()`


@wire
@dataclass(frozen=True)
class CaptureStopped:
    trace: TorchTrace | None


@wire
@dataclass(frozen=True)
class ControlFailed:
    """Serving the request raised; `message` says what."""

    message: str


Request = DrainEvents | SetRecording | StartCapture | StopCapture | AttachInput | AttachOutput
Reply = Done | Events | CaptureStopped | ControlFailed
