"""`start_all`: start-up work side by side, or one after another, and what is undone when a part fails."""

from __future__ import annotations

import threading

import pytest

from engine.parallel import start_all


def test_side_by_side_each_call_runs_while_the_others_wait() -> None:
    """Each call waits for the other's signal: one after another, neither could finish."""
    a, b = threading.Event(), threading.Event()

    def first() -> str:
        a.set()
        assert b.wait(60)
        return "first"

    def second() -> str:
        b.set()
        assert a.wait(60)
        return "second"

    assert start_all([first, second]) == ["first", "second"]


def test_a_failure_is_raised_after_the_others_ended_and_what_they_made_is_undone() -> None:
    undone: list[str] = []
    release = threading.Event()

    def slow() -> str:
        assert release.wait(60)
        return "slow"

    def broken() -> str:
        release.set()
        raise RuntimeError("no worker")

    with pytest.raises(RuntimeError, match="no worker"):
        start_all([slow, broken, lambda: "quick"], undo=undone.append)
    assert sorted(undone) == ["quick", "slow"]


def test_one_after_another_stops_at_the_first_failure() -> None:
    ran: list[str] = []
    undone: list[str] = []

    def broken() -> str:
        raise RuntimeError("no room")

    with pytest.raises(RuntimeError, match="no room"):
        start_all([lambda: ran.append("a") or "a", broken, lambda: ran.append("c") or "c"], undo=undone.append,
                  side_by_side=False)  # fmt: skip
    assert ran == ["a"] and undone == ["a"]
