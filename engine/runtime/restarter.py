"""Replacing a dead stage's worker: on a thread of its own, retried with doubling waits, for a bounded time.

Why a thread: the death is noticed on the receiver (or stage) thread, and a start-up takes seconds to minutes; done
there, it would hold up everything that thread serves, and a replacement that dies in its own start-up would end the
recovery for good. Here a failed attempt is logged and retried after `backoff_s`, then 2x, 4x ... that, until
`max_s` have passed since the death; then the stage is left down (said once in the log) and stays down. Once a new
worker is up, `on_up` runs (the router links it to the other stage) before the stage counts as up again.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.runtime.executor import Executor

log = logging.getLogger(__name__)


class StageState(enum.Enum):
    UP = "up"
    RESTARTING = "restarting"  # no worker now; one is being started
    DOWN = "down"  # restarts gave up: no worker until the engine is rebuilt


@dataclass(frozen=True)
class RestartPolicy:
    backoff_s: float  # the wait after the first failed attempt; doubled after each further one
    max_s: float  # no attempt starts, or runs, past this long after the death


class Restarter:
    """Keeps one stage's executor running: `dead()` starts a replacement on a thread of its own and returns."""

    def __init__(self, executor: Executor, policy: RestartPolicy, on_up: Callable[[], None] = lambda: None) -> None:
        self.executor, self.policy, self.on_up = executor, policy, on_up
        self.state = StageState.UP
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def up(self) -> bool:
        return self.state is StageState.UP and self.executor.alive

    def dead(self) -> None:
        """The stage's worker died: replace it, unless a replacement is already under way or we are stopping."""
        with self._lock:
            if self._stopped.is_set() or self.state is not StageState.UP:
                return
            self.state = StageState.RESTARTING
            self._thread = threading.Thread(target=self._run, name=f"{self.executor.name}-restart", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """No more attempts (the engine is closing); an attempt under way fails once the executor is closed."""
        self._stopped.set()

    def join(self, timeout_s: float) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _run(self) -> None:
        name, deadline = self.executor.name, time.monotonic() + self.policy.max_s
        wait_s, attempt = self.policy.backoff_s, 0
        while not self._stopped.is_set():
            attempt += 1
            try:
                self.executor.restart(timeout_s=max(deadline - time.monotonic(), 0.0))
            except Exception as exc:
                error = str(exc)
            else:
                error = "the new worker died at once"
                try:
                    self.on_up()
                except Exception:
                    log.exception("%s stage: its new worker could not be linked", name)
                with self._lock:
                    if self.executor.alive:  # not already dead again (that death found us still restarting)
                        self.state = StageState.UP
                        log.warning("%s stage: a new worker is up (attempt %d)", name, attempt)
                        return
            if self._stopped.is_set():
                return
            if deadline - time.monotonic() <= wait_s:  # the next attempt would start past the deadline
                with self._lock:
                    self.state = StageState.DOWN
                log.error(
                    "%s stage: no worker after %d attempts in %.0f s; the stage stays down and its requests fail "
                    "with StageUnavailable (last error: %s)",
                    name,
                    attempt,
                    self.policy.max_s,
                    error,
                )
                return
            log.warning("%s stage: restart attempt %d failed (%s); next in %.1f s", name, attempt, error, wait_s)
            if self._stopped.wait(wait_s):
                return
            wait_s *= 2
