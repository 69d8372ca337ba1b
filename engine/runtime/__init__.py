"""How stages run and talk: executors (`uni`: a thread, `mp`: a worker process, `ray`: a Ray actor; `ray_*` modules,
imported only when a stage asks for it, so that Ray is not loaded otherwise), the transport between them and
the typed control plane (`transport`, `control`), the direct link between two workers (`link`), the replacement of
a dead stage (`restarter`), what a profiler may ask of every process (`probe`), and the one thread that runs prompt
prep (`serial`)."""

from __future__ import annotations

from typing import Any

from engine.runtime.executor import Executor, ExecutorError, OnDeath, OnOutput, UniExecutor
from engine.runtime.loop import StageFactory
from engine.runtime.mp_executor import MpExecutor
from engine.runtime.transport import DEFAULT_RING_BYTES, PayloadTooLarge, TransportError

EXECUTOR_KINDS: dict[str, type[Executor]] = {"uni": UniExecutor, "mp": MpExecutor}  # and "ray", loaded on demand


def make_executor(
    kind: str,
    stage_factory: StageFactory,
    on_output: OnOutput,
    name: str,
    threads: int = 1,
    on_death: OnDeath | None = None,
    **options: Any,
) -> Executor:
    """An executor of `kind` ("uni", "mp" or "ray"); not started. `options`: ring_bytes, start_timeout_s,
    send_timeout_s; for "ray", placement (`RayPlacement`)."""
    if kind == "ray":
        from engine.runtime.ray_executor import RayExecutor

        return RayExecutor(stage_factory, on_output, name, threads, on_death, **options)
    if kind not in EXECUTOR_KINDS:
        raise ValueError(f"executor must be one of {(*EXECUTOR_KINDS, 'ray')}, got {kind!r}")
    return EXECUTOR_KINDS[kind](stage_factory, on_output, name, threads, on_death, **options)


__all__ = [
    "DEFAULT_RING_BYTES",
    "EXECUTOR_KINDS",
    "Executor",
    "ExecutorError",
    "MpExecutor",
    "PayloadTooLarge",
    "StageFactory",
    "TransportError",
    "UniExecutor",
    "make_executor",
]
