"""The stage process's side of the control plane (`runtime.control`), shared by the `mp` worker and the `ray` actor:
the questions every stage process answers the same way, between two steps of its loop."""

from __future__ import annotations

from engine.runtime.control import (
    CaptureStopped,
    ControlFailed,
    Done,
    DrainEvents,
    Events,
    Reply,
    Request,
    SetRecording,
    StartCapture,
    StopCapture,
)
from telemetry.capture import TorchCapture
from telemetry.events import Recorder


class ControlServer:
    """Answers the profiler's questions in this process: its events, recording on or off, a torch capture. A runtime
    with questions of its own (the `mp` worker's direct links) extends `serve_more`."""

    def __init__(self, name: str, rec: Recorder) -> None:
        self.name, self.rec = name, rec
        self.capture: TorchCapture | None = None

    def serve(self, request: Request) -> Reply:
        """One control request, answered; a failure is the answer, never the process's end."""
        try:
            match request:
                case DrainEvents():
                    return Events(self.rec.drain_batch().to_bytes())
                case SetRecording(enabled=enabled):
                    self.rec.enabled = enabled
                case StartCapture(tb_dir=tb_dir) if self.capture is None:
                    self.capture = TorchCapture(tb_dir, self.name, self.rec)
                    self.capture.start()
                case StopCapture():
                    capture, self.capture = self.capture, None
                    return CaptureStopped(capture.stop() if capture is not None else None)
                case _:
                    self.serve_more(request)
        except Exception as exc:
            return ControlFailed(f"{type(exc).__name__}: {exc}")
        return Done()

    def serve_more(self, request: Request) -> None:
        """A request the common ones do not cover; raising makes it a `ControlFailed`."""
        if not isinstance(request, StartCapture):  # a second StartCapture while one runs is answered Done
            raise ValueError(f"{type(request).__name__} is not served here")
