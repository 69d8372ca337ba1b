"""`all_at_once`: start-up work that waits (a worker process importing torch, an actor loading weights, a model
built from a checkpoint) done side by side, so that an engine with many stages, replicas or tasks starts in about the
time of its slowest part rather than the sum of them all."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def all_at_once(calls: Sequence[Callable[[], T]], undo: Callable[[T], object] | None = None) -> list[T]:
    """Each call in a thread of its own; their results, in order. When any raises, the first failure is raised once
    every call has ended (nothing is left starting behind the caller), after `undo` was given each result made."""
    if len(calls) == 1:
        return [calls[0]()]
    with ThreadPoolExecutor(len(calls), thread_name_prefix="start") as pool:
        futures = [pool.submit(call) for call in calls]
    failures = [f.exception() for f in futures if f.exception() is not None]
    if failures:
        for made in (f.result() for f in futures if f.exception() is None):
            if undo is not None:
                undo(made)
        raise failures[0]
    return [f.result() for f in futures]
