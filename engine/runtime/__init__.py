"""How stages run and talk: executors (`uni`: a thread, `mp`: a worker process), the transport between them and
the typed control plane (`transport`, `control`), the direct link between two workers (`link`), the replacement of
a dead stage (`restarter`), what a profiler may ask of every process (`probe`), and the one thread that runs prompt
prep (`serial`)."""

from __future__ import annotations

from typing import Any

from engine.runtime.executor import Executor, ExecutorError, OnDeath, OnOutput, UniExecutor
from engine.runtime.loop import StageFactory
from engine.runtime.mp_executor import MpExecutor
from engine.runtime.transport import DEFAULT_RING_BYTES, PayloadTooLarge, TransportError

EXECUTOR_KINDS: dict[str, type[Executor]] = {"uni": UniExecutor, "mp": MpExecutor}


def make_executor(
    kind: str,
    stage_factory: StageFactory,
    on_output: OnOutput,
    name: str,
    threads: int = 1,
    on_death: OnDeath | None = None,
    **options: Any,
) -> Executor:
    """An executor of `kind` ("uni" or "mp"); not started. `options`: ring_bytes, start_timeout_s, send_timeout_s."""
    if kind not in EXECUTOR_KINDS:
        raise ValueError(f"executor must be one of {tuple(EXECUTOR_KINDS)}, got {kind!r}")
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
