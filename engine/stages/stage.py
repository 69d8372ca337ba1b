"""The contract between a stage and the runtime that runs it (in a thread or a worker process).

A stage is synchronous and single-threaded: the runtime hands it inputs with `submit`, calls `step` while
`has_work()` is true, and delivers what `step` returns. When there is no work the runtime blocks on its input
channel (no polling), so an idle stage costs nothing. Which requests a stage may hold is the router's ledger, kept
outside the stage, so that it survives the stage's death.
"""

from __future__ import annotations

from typing import Protocol

from engine.stages.messages import StageInput, StageOutput


class Stage(Protocol):
    name: str  # "talker" or "code2wav": the profiling track and the worker's name

    def submit(self, message: StageInput) -> None:
        """Take one input; must not block or compute much (the runtime calls it between steps)."""

    def has_work(self) -> bool:
        """True while `step` would make progress (requests waiting, or rows that may run)."""

    def step(self) -> list[StageOutput]:
        """One unit of work (a decode step of the running batch, a batch of decodes) and its outputs."""
