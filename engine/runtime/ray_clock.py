"""One clock across nodes: the offset of an actor's clock from the engine's, by a round-trip exchange (Cristian's
method). Each round asks the actor for its clock between two readings of ours; the round with the shortest trip is
kept: the actor read its clock somewhere inside that trip, so the offset lies within half of it of the estimate.

On the engine's own node both processes read the same CLOCK_MONOTONIC: the estimate is recorded (a check) but the
offset applied is 0, exactly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from telemetry.events import now_ns

ROUNDS = 8


@dataclass(frozen=True)
class ClockOffset:
    """The actor's clock minus the engine's, within +- `error_ns`, as measured at `measured_ns` (engine clock)."""

    offset_ns: int
    error_ns: int
    measured_ns: int
    applied: bool  # False on the engine's node: the same clock, nothing to correct

    def to_engine(self, their_ns: int) -> int:
        return their_ns - self.offset_ns if self.applied else their_ns

    def to_theirs(self, our_ns: int) -> int:
        return our_ns + self.offset_ns if self.applied else our_ns


def estimate(ask: Callable[[], int], same_node: bool, rounds: int = ROUNDS) -> ClockOffset:
    """`ask()` returns the actor's clock now (a blocking round trip)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    best_trip, best_offset, end = None, 0, 0
    for _ in range(rounds):
        start = now_ns()
        theirs = ask()
        end = now_ns()
        if best_trip is None or end - start < best_trip:
            best_trip, best_offset = end - start, theirs - (start + end) // 2
    assert best_trip is not None
    return ClockOffset(best_offset, best_trip // 2, end, applied=not same_node)
