"""`SerialExecutor`: one thread that runs submitted calls in order (the engine's prompt prep).

Why not `ThreadPoolExecutor(max_workers=1)`: its thread cannot be joined with a bound, so closing the engine would
either wait for a long prep or leave the thread running unseen. Here `close(timeout_s)` cancels what still waits
and joins the thread for at most `timeout_s`; a call cancelled while it waits (its caller left) never runs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class SerialExecutor:
    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None]
        self._queue = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        if self._closed:
            raise RuntimeError("the executor is closed")
        future: Future[T] = Future()
        self._queue.put((future, fn, args))
        return future

    def close(self, timeout_s: float) -> None:
        """Cancel the calls that wait; let the running one finish within `timeout_s`. Idempotent."""
        self._closed = True
        self._queue.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self._call(*item)
            item = None  # not held while the thread waits for the next call

    def _call(self, future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if self._closed:
            future.cancel()
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)
