"""`start_all`: start-up work that waits (a worker process importing torch, an actor loading weights, a model built
from a checkpoint) done side by side, so that an engine with many stages, replicas or tasks starts in about the time
of its slowest part rather than the sum of them all. Work on a GPU in this process is done one after another: while
a CUDA graph is being captured, another thread's CUDA call breaks the capture or fails."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def start_all(
    calls: Sequence[Callable[[], T]], undo: Callable[[T], object] | None = None, side_by_side: bool = True
) -> list[T]:
    """Each call, in a thread of its own (or, not `side_by_side`, one after another here): their results, in order.
    When one raises, the first failure is raised once every call started has ended (nothing is left starting behind
    the caller), after `undo` was given each result made."""
    made: list[T] = []
    failure: BaseException | None = None
    if side_by_side and len(calls) > 1:
        with ThreadPoolExecutor(len(calls), thread_name_prefix="start") as pool:
            futures = [pool.submit(call) for call in calls]
        failures = [f.exception() for f in futures]
        failure = next((exc for exc in failures if exc is not None), None)
        made = [f.result() for f, exc in zip(futures, failures, strict=True) if exc is None]
    else:
        for call in calls:
            try:
                made.append(call())
            except BaseException as exc:
                failure = exc
                break
    if failure is not None:
        for result in made if undo is not None else ():
            undo(result)
        raise failure
    return made
