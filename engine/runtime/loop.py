"""The stage loop, the same for every executor (a `uni` thread, an `mp` worker).

One loop: drain every pending input into the stage, step once if it has work, deliver the outputs; block on the
inbox only when the stage has nothing to do, so an idle stage costs no CPU (no polling, no sleep).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.stages.messages import StageOutput
from engine.stages.stage import Stage

STOP = object()  # what an inbox returns when the loop must end (a stop message, the engine gone)

StageFactory = Callable[[], Stage]


def stage_loop(stage: Stage, get: Callable[[bool], Any], emit: Callable[[StageOutput], None]) -> None:
    """Run `stage` until `get` returns STOP. `get(block)` returns the next input, or None when not blocking and
    nothing is pending; it blocks only when asked to, i.e. when the stage has no work."""
    while True:
        item = get(not stage.has_work())
        while item is not None:
            if item is STOP:
                return
            stage.submit(item)
            item = get(False)
        if stage.has_work():
            for out in stage.step():
                emit(out)
