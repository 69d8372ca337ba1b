"""The `mp` worker process: builds its stage, says ready, then runs the stage loop (`runtime.loop`) on inputs read
from its pipe and ring, serving control messages between two steps."""

from __future__ import annotations

import traceback
from multiprocessing.connection import Connection
from typing import Any

from engine.runtime.loop import STOP, StageFactory, stage_loop


def _profile_control(kind: str, fields: dict[str, Any], name: str, rec: Any, capture: dict[str, Any]) -> dict:
    """Profiling controls, served between two steps: "!recording" (events on/off), "!capture_start" (torch.profiler
    into `tb_dir`), "!capture_stop" (-> the trace as a dict). The reply carries `error` when the control failed."""
    from dataclasses import asdict

    from telemetry.capture import TorchCapture

    try:
        if kind == "!recording":
            rec.enabled = bool(fields["enabled"])
        elif kind == "!capture_start":
            if "torch" not in capture:
                capture["torch"] = TorchCapture(fields["tb_dir"], name, rec)
                capture["torch"].start()
        elif kind == "!capture_stop":
            tc = capture.pop("torch", None)
            return {"trace": asdict(tc.stop()) if tc is not None else None}
        else:
            return {"error": f"unknown control {kind}"}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {}


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
    `in_bell` is rung when input space is freed; `out_bell` is waited on when the output ring is full."""
    import torch

    from engine.runtime.transport import Control, Receiver, Sender, ShmRing
    from telemetry.events import get_recorder, set_process_name

    set_process_name(name)
    torch.set_num_threads(threads)
    rec = get_recorder()
    capture: dict[str, Any] = {}  # the running TorchCapture, if any
    rings = [ShmRing(ring_bytes, in_ring), ShmRing(ring_bytes, out_ring)]
    inbox = Receiver(in_conn, rings[0], in_bell, rec)
    outbox = Sender(out_conn, rings[1], out_bell, rec, send_timeout_s)
    try:
        try:
            stage = factory()
        except BaseException:
            outbox.send_control("!error", where="start", text=traceback.format_exc())
            return
        outbox.send_control("!ready")

        def get(block: bool) -> Any:
            while block or in_conn.poll():
                try:
                    msg = inbox.recv()
                except (EOFError, OSError):
                    return STOP  # the engine closed the pipe or died
                if not isinstance(msg, Control):
                    return msg
                if msg.kind == "!stop":
                    return STOP
                if msg.kind == "!drain":
                    outbox.send_control("!events", data=rec.drain_batch().to_bytes())
                else:
                    outbox.send_control("!reply", **_profile_control(msg.kind, msg.fields, name, rec, capture))
            return None

        try:
            stage_loop(stage, get, outbox.send)
        except BaseException:
            outbox.send_control("!error", where="step", text=traceback.format_exc())
            raise SystemExit(1) from None
    finally:
        for ring in rings:
            ring.close()
        for conn in (in_conn, out_conn, in_bell, out_bell):
            conn.close()
