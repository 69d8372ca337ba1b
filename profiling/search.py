"""Successive halving over a config space, with no engine in it: candidates are dicts of knob values, and an
`Evaluator` turns one into a `Measurement` with `n_requests` requests. So the logic is tested on a simulated workload
(known cost curves, seeded noise, simulated time as the budget clock) and runs unchanged against the engine.

    result = Search(candidates, evaluator, "throughput", Slo(ttfa_p99_s=0.5), budget_s=600, min_requests=8).run()

Every candidate runs a few requests; the better half runs twice as many, and so on until the last two have run
twice as many as the rung that left them (or the run size reaches `max_requests`, or the budget would be spent).
Where two candidates at a cut are closer than the noise (the spread of repeated runs) they are run again, up to
`max_repeats`; a cut still within noise is a tie.

Candidates run one after another, and a shared machine drifts meanwhile (another job starts, a CPU throttles): a
rung with more than `drift_every` other candidates measures the default again after every `drift_every` of them and
at its end. Wherever the default ran more than once at a run size (so, too, where it is repeated at a cut), each
run's score there is divided by its `drift`: the default's score at that moment (interpolated between its runs on
either side) over the default's mean at that size. So every candidate is ranked as if it had run on the machine the
default met on average; the SLOs are checked on the figures as measured. A candidate
that breaks an SLO (or has failed requests) ranks below every one that meets them: it is kept and marked, never
recommended. Among candidates tied with the best, the one that changes the fewest knobs of the default wins.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

OBJECTIVES = {
    "throughput": "the most audio seconds per second within the SLOs",
    "ttfa": "the lowest TTFA p99 within the SLOs",
}
Values = dict[str, Any]  # knob name -> value: one point of the space


@dataclass(frozen=True)
class Measurement:
    """One run of a candidate: the figures the SLOs and the objective need, what it cost, and the profiler's
    figures that explain it (`signals`, see profiling.signals)."""

    n_requests: int
    audio_s_per_s: float
    ttfa_p99_s: float
    underrun_p99_s: float
    rtf_p99: float
    errors: int = 0
    error: str | None = None  # the first failed request's message
    setup_s: float = 0.0  # building and warming the engine (0 when it was reused)
    run_s: float = 0.0
    signals: Mapping[str, float] = field(default_factory=dict)
    seq: int = 0  # its place in the search's order of runs (set by the search)
    drift: float = 1.0  # the default's score near this run over its mean at this size; the score is divided by it


class Evaluator(Protocol):
    """Runs a candidate. `kept_engines`: how many configs it keeps set up between runs; with fewer than two, every
    run of the verification's alternation sets its engine up again, and the budget keeps that back too."""

    kept_engines: int

    def measure(self, values: Values, n_requests: int) -> Measurement: ...


class Abort(Exception):
    """Raised by an evaluator when no candidate can run (the workload does not fit the model): the search stops,
    where any other error marks one candidate failed and the search goes on."""


def score(objective: str, m: Measurement | Summary) -> float:
    """Higher is better; a measurement's as measured (a summary's is corrected for drift)."""
    return m.audio_s_per_s if objective == "throughput" else -m.ttfa_p99_s


@dataclass(frozen=True)
class Slo:
    """Service-level objectives on p99s over a run's requests; None: no limit. underrun 0: no audible gap."""

    ttfa_p99_s: float | None = None
    underrun_p99_s: float | None = None
    rtf_p99: float | None = None

    def breaches(self, m: Measurement | Summary) -> list[str]:
        out = []
        for name, label, unit in (("ttfa_p99_s", "TTFA p99", "s"), ("underrun_p99_s", "underrun p99", "s"),
                                  ("rtf_p99", "RTF p99", "")):  # fmt: skip
            limit, value = getattr(self, name), getattr(m, name)
            if limit is not None and not value <= limit:  # NaN (no audio) breaks it too
                out.append(f"{label} {value:.3g}{unit} > {limit:g}{unit}")
        return out

    def excess(self, m: Measurement | Summary) -> float:
        """How far past its SLOs a candidate is (sum of relative excesses): ranks the ones that break them."""
        total = 0.0
        for name in ("ttfa_p99_s", "underrun_p99_s", "rtf_p99"):
            limit, value = getattr(self, name), getattr(m, name)
            if limit is not None:
                total += math.inf if value != value else max(0.0, value - limit) / (limit or 1.0)
        return total


@dataclass(frozen=True)
class Summary:
    """A candidate's repeats at one run size: the figures' means as measured, and the objective's score (each run's
    divided by its drift) with its spread (max - min)."""

    n_requests: int
    repeats: int
    audio_s_per_s: float
    ttfa_p99_s: float
    underrun_p99_s: float
    rtf_p99: float
    errors: int
    score: float
    spread: float  # NaN with one repeat
    drift: float  # the mean of the runs' drift (1: no correction)
    signals: dict[str, float]

    @classmethod
    def of(cls, objective: str, runs: Sequence[Measurement]) -> Summary:
        figures = ("audio_s_per_s", "ttfa_p99_s", "underrun_p99_s", "rtf_p99")
        means = [statistics.fmean(getattr(m, name) for m in runs) for name in figures]
        scores = [score(objective, m) / m.drift for m in runs]
        keys = sorted(set().union(*(m.signals for m in runs)))
        return cls(
            runs[0].n_requests,
            len(runs),
            *means,
            sum(m.errors for m in runs),
            statistics.fmean(scores),
            max(scores) - min(scores) if len(runs) > 1 else math.nan,
            statistics.fmean(m.drift for m in runs),
            {k: statistics.fmean(m.signals[k] for m in runs if k in m.signals) for k in keys},
        )


@dataclass
class Candidate:
    id: str
    values: Values
    label: str = ""  # the knobs that differ from the default, "default" when none
    runs: dict[int, list[Measurement]] = field(default_factory=dict)  # run size -> repeats
    failed: str | None = None  # the evaluator raised: why
    notes: list[str] = field(default_factory=list)  # eliminated, tie, not measured, ...

    def largest(self) -> int | None:
        return max(self.runs) if self.runs else None


@dataclass
class SearchResult:
    objective: str
    slo: Slo
    candidates: list[Candidate]
    default: Candidate
    recommended: Candidate | None  # None: no candidate met the SLOs
    tied: list[Candidate]  # within noise of the recommendation at the final comparison
    compared_at: int  # requests per run of the final comparison
    noise: dict[str, float]  # candidate id -> the noise of the final comparison (see Search.noise)
    relative_noise: float  # pooled spread / |score| of repeated runs (NaN when nothing was repeated)
    spent_s: float
    budget_s: float
    stopped: str  # why the search ended

    def summary(self, c: Candidate, n: int | None = None) -> Summary | None:
        n = c.largest() if n is None else n
        return Summary.of(self.objective, c.runs[n]) if n in c.runs else None

    def meets(self, c: Candidate, n: int | None = None) -> bool:
        s = self.summary(c, n)
        return s is not None and meets(self.slo, c, s)


def meets(slo: Slo, c: Candidate, s: Summary) -> bool:
    """Recommendable: ran, no failed request, a score, every SLO met."""
    return c.failed is None and s.errors == 0 and s.score == s.score and not slo.breaches(s)


def changed(values: Values, default: Values) -> list[str]:
    return [k for k in values if values[k] != default.get(k)]


class Search:
    def __init__(
        self,
        candidates: Sequence[Candidate],
        evaluator: Evaluator,
        objective: str,
        slo: Slo,
        *,
        budget_s: float,
        min_requests: int,
        max_requests: int | None = None,
        eta: int = 2,
        max_repeats: int = 3,
        reserve_runs: int = 4,
        drift_every: int = 4,
        compose: bool = True,
        clock: Callable[[], float] = time.monotonic,
        on_measure: Callable[[Candidate, Measurement], None] | None = None,
    ) -> None:
        """`candidates[0]` is the default config. `reserve_runs`: runs at the final size kept out of the budget for
        the verification that follows (with an engine set-up for each of them when the evaluator keeps fewer than
        two configs up, else two). `drift_every`: other candidates
        between two runs of the default in a rung (0: the default runs once a rung, no drift correction).
        `compose`: after the first rung, add the candidate that takes from each one-knob variation of the default
        its value when it beat the default by more than the noise."""
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
        if not candidates:
            raise ValueError("no candidates to search")
        if drift_every < 0:
            raise ValueError(f"drift_every must be >= 0, got {drift_every}")
        self.candidates, self.evaluator, self.objective, self.slo = list(candidates), evaluator, objective, slo
        self.default = self.candidates[0]
        self.budget_s, self.min_requests = budget_s, min_requests
        self.max_requests = max_requests or 4 * min_requests
        self.eta, self.max_repeats, self.compose = eta, max_repeats, compose
        self.reserve_runs, self.drift_every = reserve_runs, drift_every
        self.clock, self.on_measure = clock, on_measure
        self._t0 = clock()
        self._seq = 0  # runs so far
        self._corrected: set[int] = set()  # run sizes where the default ran more than once: scores drift-corrected

    # -- the halving

    def run(self) -> SearchResult:
        alive, n, rung = list(self.candidates), self.min_requests, 0
        while True:
            for c in self._order(alive):
                if c.failed is None and not self._measure(c, n):
                    return self._finish(alive, "budget")
            alive = [c for c in alive if c.failed is None]
            # the last two get a rung of their own: the final comparison is at the longest runs
            final = len(alive) == 1 or (len(alive) <= 2 and rung > 0) or n >= self.max_requests
            keep = 1 if final else max(2, math.ceil(len(alive) / self.eta))
            resolved = self._resolve(alive, n, keep)
            alive = [c for c in alive if c.failed is None]
            if not resolved:
                return self._finish(alive, "budget")
            if final:
                return self._finish(alive, "two left" if len(alive) <= 2 else "largest run size")
            ranked = self._rank(alive, n)
            for c in ranked[keep:]:
                c.notes.append(f"eliminated at {n} requests")
            alive, n, rung = ranked[:keep], min(n * self.eta, self.max_requests), rung + 1
            if self.compose and rung == 1 and (mix := self._composed()) is not None:
                alive.append(mix)

    def _order(self, alive: list[Candidate]) -> list[Candidate]:
        """A rung's runs: the default first when it is alive, and again after every `drift_every` others and at the
        end, when there are more than `drift_every` others."""
        others = [c for c in alive if c is not self.default]
        if self.default not in alive:
            return others
        if not self.drift_every or len(others) <= self.drift_every:
            return [self.default, *others]
        out = [self.default]
        for i in range(0, len(others), self.drift_every):
            out += [*others[i : i + self.drift_every], self.default]
        return out

    def _measure(self, c: Candidate, n: int) -> bool:
        """One run, if the budget (less the verification's reserve) allows it; False when it does not."""
        spent = self.clock() - self._t0
        if spent + self._estimate(c, n) + self._reserve(n) > self.budget_s:
            return False
        try:
            m = self.evaluator.measure(c.values, n)
        except Abort:
            raise
        except Exception as exc:  # one config that cannot run is marked; the search goes on
            c.failed = f"{type(exc).__name__}: {exc}"
            c.notes.append(f"failed: {c.failed}")
            return True
        c.runs.setdefault(n, []).append(dataclasses.replace(m, seq=self._seq))
        self._seq += 1
        self._correct_drift(n)
        if self.on_measure is not None:
            self.on_measure(c, m)
        return True

    def _correct_drift(self, n: int) -> None:
        """Set every run's drift at size `n` from the default's runs there (see the module doc); none with
        `drift_every` 0, while the default ran once, or when its score is not a positive number."""
        refs = sorted((m.seq, abs(score(self.objective, m))) for m in self.default.runs.get(n, []))
        if not self.drift_every or len(refs) < 2 or not all(0 < s < math.inf for _, s in refs):
            return
        self._corrected.add(n)
        mean = statistics.fmean(s for _, s in refs)
        for c in self.candidates:
            if n in c.runs:
                c.runs[n] = [dataclasses.replace(m, drift=_interpolate(refs, m.seq) / mean) for m in c.runs[n]]

    def _estimate(self, c: Candidate, n: int) -> float:
        """Seconds a run of `c` with `n` requests will take: its own set-up (else the median one) plus n times the
        median seconds per request. Zero before anything was measured: the first run always happens."""
        done = [m for x in self.candidates for ms in x.runs.values() for m in ms]
        if not done:
            return 0.0
        cold = {x.id: max(m.setup_s for ms in x.runs.values() for m in ms) for x in self.candidates if x.runs}
        setup = cold.get(c.id, statistics.median(cold.values()))
        return setup + n * statistics.median(m.run_s / m.n_requests for m in done)

    def _reserve(self, n: int) -> float:
        """The verification's share of the budget: `reserve_runs` runs of `n` requests (the verification runs at the
        final comparison's size, never above the size being run now) and the engine set-ups they need: two when the
        evaluator keeps both configs up, else one per run. None while no candidate meets the SLOs: there would be
        nothing to verify."""
        if not self.reserve_runs or not any(self._key(c, max(c.runs))[0] for c in self.candidates if c.runs):
            return 0.0
        setup = self._estimate(self.default, 0)
        setups = min(2, self.reserve_runs) if self.evaluator.kept_engines >= 2 else self.reserve_runs
        return setups * setup + self.reserve_runs * (self._estimate(self.default, n) - setup)

    def _resolve(self, alive: list[Candidate], n: int, keep: int) -> bool:
        """Repeat the two candidates either side of the cut while they are within noise of each other; at the final
        cut, until both have a spread of their own (a noise pooled from shorter runs is not trusted to pick)."""
        while keep < len(alive):
            ranked = self._rank(alive, n)
            a, b = ranked[keep - 1], ranked[keep]
            unrepeated = keep == 1 and self._key(b, n)[0] and min(len(a.runs[n]), len(b.runs[n])) < 2
            if not unrepeated and not self._within_noise(a, b, n):
                return True
            todo = [c for c in (a, b) if len(c.runs[n]) < self.max_repeats]
            if not todo:
                return True
            if not self._measure(min(todo, key=lambda c: len(c.runs[n])), n):
                return False
            alive = [c for c in alive if c.failed is None]
        return True

    def _composed(self) -> Candidate | None:
        """The default with every knob whose one-knob variation beat it by more than the noise, at that value."""
        n, base = self.min_requests, self.default
        if n not in base.runs:
            return None
        mix = dict(base.values)
        for c in self.candidates:
            diff = changed(c.values, base.values)
            if len(diff) == 1 and n in c.runs and self._better(c, base, n) and not self._within_noise(c, base, n):
                best = [x for x in self.candidates if changed(x.values, base.values) == diff and n in x.runs]
                if c is max(best, key=lambda x: self._key(x, n)):
                    mix[diff[0]] = c.values[diff[0]]
        if len(changed(mix, base.values)) < 2 or any(c.values == mix for c in self.candidates):
            return None
        mixed = Candidate(f"c{len(self.candidates):02d}", mix, label(mix, base.values), notes=["composed"])
        self.candidates.append(mixed)
        return mixed

    # -- comparisons

    def _key(self, c: Candidate, n: int) -> tuple[bool, float]:
        s = Summary.of(self.objective, c.runs[n])
        ok = meets(self.slo, c, s)
        return ok, s.score if ok else -self.slo.excess(s) - (1e9 if s.errors else 0)  # failed requests: last

    def _rank(self, cands: Sequence[Candidate], n: int) -> list[Candidate]:
        return sorted(cands, key=lambda c: self._key(c, n), reverse=True)

    def _better(self, a: Candidate, b: Candidate, n: int) -> bool:
        return self._key(a, n) > self._key(b, n)

    def relative_noise(self, n: int | None = None) -> float:
        """Median over repeated candidates of spread / |score| (at size `n` when any were repeated there); not the
        default's where its runs are the drift reference (their corrected scores agree by construction)."""
        pairs = [
            (size, Summary.of(self.objective, ms))
            for c in self.candidates
            for size, ms in c.runs.items()
            if not (c is self.default and size in self._corrected)
        ]
        rel = [s.spread / abs(s.score) for size, s in pairs if s.repeats > 1 and s.score and (n in (None, size))]
        if not rel and n is not None:
            return self.relative_noise(None)
        return statistics.median(rel) if rel else math.nan

    def noise(self, c: Candidate, n: int) -> float:
        """The larger of the spread of `c`'s repeats and the pooled relative spread times its score (two runs that
        happen to agree do not make a candidate precise); NaN when neither is known."""
        s = Summary.of(self.objective, c.runs[n])
        known = [x for x in (s.spread, self.relative_noise(n) * abs(s.score)) if x == x]
        return max(known) if known else math.nan

    def _within_noise(self, a: Candidate, b: Candidate, n: int, unknown: bool = True) -> bool:
        """Unknown noise counts as within (`unknown`) while a repeat can still find it out; candidates that break
        SLOs are not worth repeats, and one that meets them is always apart from one that does not."""
        ka, kb = self._key(a, n), self._key(b, n)
        if not (ka[0] and kb[0]):
            return False
        noise = max(self.noise(a, n), self.noise(b, n))
        return unknown if noise != noise else abs(ka[1] - kb[1]) <= noise

    # -- the end

    def _finish(self, alive: list[Candidate], stopped: str) -> SearchResult:
        measured = [c for c in alive if c.runs and c.failed is None]
        for size in sorted(self._corrected):
            ref = [score(self.objective, m) for m in self.default.runs[size]]
            apart = (max(ref) - min(ref)) / abs(statistics.fmean(ref))
            self.default.notes.append(
                f"drift reference at {size} requests: {len(ref)} runs, {100 * apart:.0f}% apart as measured"
            )
        for c in self.candidates:
            if not c.runs and c.failed is None:
                c.notes.append("not measured (budget)")
            elif c.runs and (s := Summary.of(self.objective, c.runs[max(c.runs)])).errors:
                c.notes.append(f"{s.errors} failed requests")
            elif c.runs and (broken := self.slo.breaches(s)):
                c.notes.append("breaks SLO: " + "; ".join(broken))
        sizes = [n for c in measured for n in c.runs]
        n = max(sizes, key=lambda n: (sizes.count(n), n)) if sizes else 0  # the size most of them reached
        ranked = self._rank([c for c in measured if n in c.runs], n)
        best = ranked[0] if ranked and self._key(ranked[0], n)[0] else None
        tied = [c for c in ranked[1:] if best is not None and self._within_noise(best, c, n, unknown=False)]
        if tied:  # a change within noise of no change is not worth making: fewest knobs changed wins
            group = [best, *tied]
            best = min(group, key=lambda c: len(changed(c.values, self.default.values)))
            tied = [c for c in group if c is not best]
            for c in group:
                c.notes.append("tie (within noise)")
        if best is not None:
            best.notes.append("recommended")
        return SearchResult(
            self.objective,
            self.slo,
            self.candidates,
            self.default,
            best,
            tied,
            n,
            {c.id: self.noise(c, n) for c in self.candidates if n in c.runs and c.failed is None},
            self.relative_noise(),
            self.clock() - self._t0,
            self.budget_s,
            stopped,
        )


def _interpolate(points: Sequence[tuple[int, float]], x: int) -> float:
    """The piecewise-linear curve through `points` (sorted by x) at `x`; the nearest end outside them."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def make_candidates(points: Sequence[Values]) -> list[Candidate]:
    """Candidates c00, c01, ... labelled by what they change; `points[0]` is the default."""
    return [Candidate(f"c{i:02d}", dict(p), label(p, points[0])) for i, p in enumerate(points)]


def label(values: Values, default: Values) -> str:
    diff = changed(values, default)
    return ", ".join(f"{k}={values[k]}" for k in diff) if diff else "default"


@dataclass
class Verification:
    """The recommendation against the default, run alternately (default, recommended, default, ...), so both meet
    the same machine; `gain` is the relative change of the objective's score, `within_noise` when the runs'
    spread is larger than the difference."""

    default: Summary
    recommended: Summary
    gain: float
    within_noise: bool


def verify(evaluator: Evaluator, objective: str, default: Values, recommended: Values, n: int, rounds: int = 2
           ) -> Verification:  # fmt: skip
    runs: dict[str, list[Measurement]] = {"default": [], "recommended": []}
    for _ in range(rounds):
        for name, values in (("default", default), ("recommended", recommended)):
            runs[name].append(evaluator.measure(values, n))
    d, r = (Summary.of(objective, runs[k]) for k in ("default", "recommended"))
    noise = max(d.spread, r.spread) if rounds > 1 else math.nan
    gain = (r.score - d.score) / abs(d.score) if d.score else math.nan
    return Verification(d, r, gain, not abs(r.score - d.score) > noise)
