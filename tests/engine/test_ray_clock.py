"""One clock across nodes: the round-trip estimate of an actor's clock offset (no Ray needed: `ask` is the round
trip)."""

from __future__ import annotations

import pytest

from engine.runtime import ray_clock
from engine.runtime.ray_clock import estimate
from telemetry.events import now_ns

SKEW_NS = 7_300_000_000  # a node whose clock runs 7.3 s ahead of ours


def test_an_offset_is_found_within_its_error_bound_and_applied_off_the_engine_s_node() -> None:
    clock = estimate(lambda: now_ns() + SKEW_NS, same_node=False)
    assert clock.applied and 0 <= clock.error_ns < 50_000_000
    assert abs(clock.offset_ns - SKEW_NS) <= clock.error_ns
    their_event = now_ns() + SKEW_NS
    assert abs(clock.to_engine(their_event) - now_ns()) < 50_000_000  # back on our clock
    assert clock.to_theirs(clock.to_engine(their_event)) == their_event


def test_the_shortest_round_trip_gives_the_estimate_and_its_error_bound(monkeypatch) -> None:
    ours = iter([0, 20_000, 100_000, 100_400, 200_000, 205_000])  # round trips of 20 µs, 400 ns and 5 µs
    theirs = iter([SKEW_NS + 3_000, SKEW_NS + 100_200, SKEW_NS + 204_000])
    monkeypatch.setattr(ray_clock, "now_ns", lambda: next(ours))
    clock = ray_clock.estimate(lambda: next(theirs), same_node=False, rounds=3)
    assert clock.offset_ns == SKEW_NS and clock.error_ns == 200 and clock.measured_ns == 205_000


def test_on_the_engine_s_node_the_clock_is_the_same_one_and_nothing_is_shifted() -> None:
    clock = estimate(now_ns, same_node=True)
    assert not clock.applied and clock.to_engine(123) == 123 and clock.to_theirs(123) == 123


@pytest.mark.parametrize("rounds", [0, -1])
def test_at_least_one_round_is_needed(rounds: int) -> None:
    with pytest.raises(ValueError, match="rounds"):
        estimate(now_ns, same_node=False, rounds=rounds)
