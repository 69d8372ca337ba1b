"""The search logic on a simulated workload: every candidate's true figures are known, runs are noisy with a seeded
RNG, and the budget's clock is simulated time (each run advances it by its set-up and its requests)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from profiling.search import Measurement, Search, Slo, Summary, Values, make_candidates, verify


@dataclass
class Simulated:
    """`truth(values)` -> (audio s/s, TTFA p99 s). Each run costs `setup_s` + `per_request_s` per request of
    simulated time; its figures (TTFA also as a signal) are the truth times a seeded Gaussian jitter of `noise`
    (relative) at 8 requests, shrinking as 1/sqrt(n) for longer runs; a run of a config other than the last `keep`
    ones sets it up (with `keep` 0, every run does). `speed(t)`: the machine at simulated time t, as a factor on
    throughput (and a divisor of TTFA); 1 throughout unless given."""

    truth: dict[tuple, tuple[float, float]]
    noise: float = 0.02
    setup_s: float = 5.0
    per_request_s: float = 0.5
    seed: int = 0
    speed: Callable[[float], float] = lambda t: 1.0
    keep: int = 0
    now: float = 0.0
    calls: list[tuple[tuple, int]] = field(default_factory=list)

    @property
    def kept_engines(self) -> int:
        return self.keep

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def clock(self) -> float:
        return self.now

    def measure(self, values: Values, n_requests: int) -> Measurement:
        key = tuple(values.values())
        kept = list(dict.fromkeys(k for k, _ in reversed(self.calls)))[: self.keep]
        setup_s = 0.0 if key in kept else self.setup_s
        self.calls.append((key, n_requests))
        run_s = n_requests * self.per_request_s
        speed = self.speed(self.now)
        self.now += setup_s + run_s
        tput, ttfa = self.truth[key]
        tput, ttfa = tput * speed, ttfa / speed
        sigma = self.noise * (8 / n_requests) ** 0.5
        return Measurement(
            n_requests,
            audio_s_per_s=tput * self.rng.gauss(1, sigma),
            ttfa_p99_s=ttfa * self.rng.gauss(1, sigma),
            underrun_p99_s=0.0,
            rtf_p99=0.5,
            setup_s=setup_s,
            run_s=run_s,
            signals={"ttfa_p99_ms": ttfa * 1e3},  # as the profiler's timeline would give it
        )


def search(sim: Simulated, points: list[Values], budget_s: float = 1000, slo: Slo | None = None, **kw) -> Search:
    """Halving from 8 requests a run, on the simulation's clock."""
    return Search(make_candidates(points), sim, "throughput", slo or Slo(), budget_s=budget_s, min_requests=8,
                  clock=sim.clock, **kw)  # fmt: skip


def test_halving_finds_the_fastest_config_and_stops_within_budget() -> None:
    tput = [5.0, 6.0, 7.0, 8.0, 9.0, 12.0, 8.5, 7.5]
    sim = Simulated({(x,): (t, 0.2) for x, t in enumerate(tput)})
    result = search(sim, [{"x": x} for x in range(8)], budget_s=400).run()

    assert result.recommended is not None and result.recommended.values == {"x": 5}
    assert result.spent_s <= result.budget_s and sim.now == result.spent_s
    sizes = {c.values["x"]: c.largest() for c in result.candidates}
    assert sizes[5] == 32 and sizes[0] == 8  # the best ran the longest runs, the slowest only the short one
    assert sum("eliminated at 8 requests" in c.notes for c in result.candidates) == 4
    assert result.tied == []


def test_the_best_of_each_knob_is_composed_into_a_candidate_of_its_own() -> None:
    """Two knobs that each help, measured one at a time from the default: their combination is tried too."""
    sim = Simulated({(a, b): (10.0 + 2 * a + 3 * b, 0.2) for a in (0, 1) for b in (0, 1)})
    points = [{"a": 0, "b": 0}, {"a": 1, "b": 0}, {"a": 0, "b": 1}]
    result = search(sim, points).run()
    assert result.recommended is not None and result.recommended.values == {"a": 1, "b": 1}
    assert "composed" in result.recommended.notes and result.recommended.label == "a=1, b=1"


def test_candidates_within_noise_are_repeated_and_reported_as_a_tie() -> None:
    sim = Simulated({(0,): (10.0, 0.2), (1,): (10.05, 0.2)}, noise=0.05)
    result = search(sim, [{"x": 0}, {"x": 1}], max_repeats=3).run()

    assert [n for _, n in sim.calls] == [8, 8] + [16] * 6  # the final two at longer runs, repeated to the limit
    assert result.recommended is not None and result.tied
    assert {result.recommended.values["x"], result.tied[0].values["x"]} == {0, 1}
    assert result.recommended.values == {"x": 0}  # a change within noise of no change is not recommended
    assert result.relative_noise > 0


def test_a_clear_winner_needs_one_repeat_of_each_finalist_and_no_more() -> None:
    sim = Simulated({(0,): (10.0, 0.2), (1,): (14.0, 0.2)})
    result = search(sim, [{"x": 0}, {"x": 1}]).run()
    assert result.recommended is not None and result.recommended.values == {"x": 1} and not result.tied
    assert [n for _, n in sim.calls] == [8, 8] + [16] * 4  # a spread of its own for each: 14 vs 10 is far outside it


def test_a_candidate_that_breaks_an_slo_is_marked_and_never_recommended() -> None:
    truth = {(0,): (8.0, 0.2), (1,): (9.0, 0.3), (2,): (15.0, 0.9), (3,): (6.0, 0.2)}  # 2: fastest, slow first audio
    result = search(Simulated(truth), [{"x": x} for x in range(4)], slo=Slo(ttfa_p99_s=0.5)).run()

    assert result.recommended is not None and result.recommended.values == {"x": 1}
    fast = next(c for c in result.candidates if c.values == {"x": 2})
    assert fast.runs and not result.meets(fast)
    assert any(note.startswith("breaks SLO: TTFA p99") and note.endswith("> 0.5s") for note in fast.notes), fast.notes


def test_when_nothing_meets_the_slos_there_is_no_recommendation() -> None:
    truth = {(0,): (8.0, 0.9), (1,): (9.0, 1.2)}
    result = search(Simulated(truth), [{"x": 0}, {"x": 1}], slo=Slo(ttfa_p99_s=0.5)).run()
    assert result.recommended is None
    assert all(any(n.startswith("breaks SLO") for n in c.notes) for c in result.candidates)


def test_a_small_budget_stops_the_search_and_marks_what_was_not_measured() -> None:
    sim = Simulated({(x,): (5.0 + x, 0.2) for x in range(8)})
    result = search(sim, [{"x": x} for x in range(8)], budget_s=60, reserve_runs=0).run()

    assert result.stopped == "budget" and sim.now <= 60
    # 6 runs of 9 s fit in 60 s: the default, x=1..4, and the default again (the drift check after 4 others)
    assert [key for key, _ in sim.calls] == [(0,), (1,), (2,), (3,), (4,), (0,)]
    assert sum("not measured (budget)" in c.notes for c in result.candidates) == 3
    assert result.recommended is not None and result.recommended.values == {"x": 4}  # the best of those measured


def test_the_search_leaves_room_in_the_budget_for_the_verification() -> None:
    sim = Simulated({(x,): (5.0 + x, 0.2) for x in range(8)})
    result = search(sim, [{"x": x} for x in range(8)], budget_s=120, reserve_runs=4).run()
    assert result.stopped == "budget" and result.recommended is not None
    verify(sim, "throughput", result.default.values, result.recommended.values, result.compared_at, rounds=2)
    assert sim.now <= 120


def test_an_evaluator_that_keeps_one_engine_up_keeps_a_set_up_back_for_every_verification_run() -> None:
    """The view's lab engines keep one config up: each run of the verification's alternation sets its engine up
    again (20 s here). Whatever the budget, the search leaves room for that; counting two set-ups, as for an
    evaluator that keeps both up, would overrun."""

    class ClaimsTwo(Simulated):
        kept_engines = 2  # type: ignore[assignment]

    def spent(sim: Simulated, budget_s: float) -> float:
        result = search(sim, [{"x": x} for x in range(6)], budget_s=budget_s).run()
        if result.recommended is not None and result.recommended is not result.default:
            verify(sim, "throughput", result.default.values, result.recommended.values, result.compared_at)
        return sim.now

    truth = {(x,): (5.0 + x, 0.2) for x in range(6)}
    for budget_s in range(60, 400, 20):
        assert spent(Simulated(truth, setup_s=20.0, keep=1), budget_s) <= budget_s
    assert spent(ClaimsTwo(truth, setup_s=20.0, keep=1), 200) > 200


def test_nothing_is_kept_back_for_a_verification_while_no_candidate_meets_the_slos() -> None:
    sim = Simulated({(x,): (5.0 + x, 0.9) for x in range(4)})
    result = search(sim, [{"x": x} for x in range(4)], budget_s=80, slo=Slo(ttfa_p99_s=0.5), reserve_runs=4).run()
    assert result.recommended is None and sim.now <= 80
    assert result.compared_at == 16  # the last two ran 16 requests: a reserve of 2 set-ups and 4 runs would not fit


def test_a_config_that_cannot_run_is_marked_failed_and_the_search_goes_on() -> None:
    class Broken(Simulated):
        def measure(self, values: Values, n_requests: int) -> Measurement:
            if values["x"] == 1:
                raise RuntimeError("worker did not start")
            return super().measure(values, n_requests)

    result = search(Broken({(0,): (5.0, 0.2), (2,): (6.0, 0.2)}), [{"x": 0}, {"x": 1}, {"x": 2}]).run()
    assert result.recommended is not None and result.recommended.values == {"x": 2}
    assert result.candidates[1].notes == ["failed: RuntimeError: worker did not start"]


def test_the_verification_alternates_default_and_recommendation() -> None:
    sim = Simulated({(0,): (10.0, 0.2), (1,): (12.0, 0.2)})
    check = verify(sim, "throughput", {"x": 0}, {"x": 1}, 16, rounds=2)
    assert sim.calls == [((0,), 16), ((1,), 16)] * 2
    assert check.gain == pytest.approx(0.2, abs=0.03) and not check.within_noise
    assert check.default.repeats == check.recommended.repeats == 2


def test_a_machine_that_slows_during_the_first_rung_does_not_eliminate_the_best_candidate() -> None:
    """At 50 s another job starts and the machine loses 40% for good. The best candidate, x=7 (+15% on the default),
    runs after that: measured as it is, it looks among the slowest, and the repeats that chase the noise spend the
    budget, so the default wins; with the default measured again every three runs, each run is read against the
    default near it, and x=7 wins, within the same budget."""
    truth = {(x,): (t, 0.2) for x, t in enumerate([10.0, 8.0, 9.0, 9.5, 9.0, 8.5, 9.0, 11.5])}
    points = [{"x": x} for x in range(8)]

    def loaded(t: float) -> float:
        return 1.0 if t < 50 else 0.6

    old = search(Simulated(truth, speed=loaded), points, budget_s=250, drift_every=0).run()
    assert old.recommended is old.default and all(m.drift == 1.0 for m in old.default.runs[8])

    sim = Simulated(truth, speed=loaded)
    result = search(sim, points, budget_s=250, drift_every=3).run()
    first = [key for key, n in sim.calls if n == 8]
    assert first[:11] == [(0,), (1,), (2,), (3,), (0,), (4,), (5,), (6,), (0,), (7,), (0,)]  # the default brackets
    assert result.recommended is result.candidates[7] and result.candidates[7].largest() > 8
    verify(sim, "throughput", result.default.values, result.recommended.values, result.compared_at)
    assert sim.now <= 250
    default = result.candidates[0]
    assert any(note.startswith("drift reference at 8 requests: 4 runs") for note in default.notes), default.notes
    # against its mean of 8: fast, fast, loaded, loaded
    assert [m.drift for m in default.runs[8]] == pytest.approx([1.25, 1.25, 0.75, 0.75], abs=0.05)
    assert Summary.of("throughput", default.runs[8]).spread == pytest.approx(0)  # the reference agrees with itself


def test_a_rung_of_few_candidates_runs_the_default_once_and_corrects_nothing() -> None:
    sim = Simulated({(x,): (5.0 + x, 0.2) for x in range(4)})
    result = search(sim, [{"x": x} for x in range(4)], drift_every=4).run()
    assert [key for key, n in sim.calls if n == 8][:4] == [(0,), (1,), (2,), (3,)]  # then repeats at the cut
    assert len(result.default.runs[8]) == 1 and all(m.drift == 1.0 for c in result.candidates for m in c.runs[8])
