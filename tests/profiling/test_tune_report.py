"""What a Tune run writes, from a simulated search: the table, the Pareto chart, the verdict, the evidence."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from profiling.evidence import explain
from profiling.search import Search, Slo, make_candidates, verify
from profiling.tune_report import TuneReport, _front
from tests.profiling.test_search import Simulated, search

TRUTH = {(2,): (10.0, 0.20), (1,): (11.0, 0.30), (4,): (12.0, 0.45)}  # 2: the default; 4: the fastest, and the latest


def report(slo: Slo) -> TuneReport:
    sim = Simulated(TRUTH)
    result = search(sim, [{"chunking.first_chunk_frames": x} for x in (2, 1, 4)], slo=slo).run()
    check = None
    if result.recommended is not None and result.recommended is not result.default:
        check = verify(sim, "throughput", result.default.values, result.recommended.values, result.compared_at)
    knobs = {"chunking.first_chunk_frames": ("ttfa_p99_ms",)}
    return TuneReport("simulated", result, check, explain(result, knobs, check), None, {"seed": 0})


def test_the_files_hold_every_candidate_with_its_spread_and_the_slo_line(tmp_path: Path) -> None:
    paths = report(Slo(ttfa_p99_s=0.4)).write(tmp_path)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["chunking.first_chunk_frames"] for r in rows] == ["2", "1", "4"]
    assert [r["meets_slo"] for r in rows] == ["True", "True", "False"] and "breaks SLO" in rows[2]["notes"]
    doc = json.loads(paths["json"].read_text(), parse_constant=pytest.fail)
    assert doc["recommended"] == "c01" and doc["slo"]["ttfa_p99_s"] == 0.4
    page = paths["html"].read_text()
    assert "TTFA p99 SLO 400 ms" in page and "Pareto front" in page and "yaml" not in paths


def test_the_verdict_of_a_default_that_wins_and_of_nothing_that_meets_the_slos() -> None:
    assert "The default is the recommendation" in report(Slo(ttfa_p99_s=0.25)).verdict()
    nothing = report(Slo(ttfa_p99_s=0.1)).verdict()
    assert "nothing is recommended" in nothing and "The closest, c00 (default): TTFA p99 0." in nothing


def test_a_changed_knob_has_a_sentence_of_evidence() -> None:
    r = report(Slo())  # no SLO: the fastest, first_chunk_frames 4, wins
    (evidence,) = r.evidence
    assert evidence.knob == "chunking.first_chunk_frames" and evidence.compared == ("c02", "c00")
    assert evidence.sentence.startswith("chunking.first_chunk_frames = 4 (default 2): audio-s/s 1")
    assert evidence.sentence.endswith("(c02 against c00, 8 requests).")  # the two differ in this knob alone
    assert r.verification is not None and r.verification.gain == pytest.approx(0.2, abs=0.05)


def test_a_knob_whose_signal_is_the_objective_says_it_once() -> None:
    sim = Simulated({(2,): (10.0, 0.20), (1,): (9.0, 0.12)})
    points = make_candidates([{"chunking.first_chunk_frames": x} for x in (2, 1)])
    result = Search(points, sim, "ttfa", Slo(), budget_s=1000, min_requests=8, clock=sim.clock).run()
    (evidence,) = explain(result, {"chunking.first_chunk_frames": ("ttfa_p99_ms",)})
    assert evidence.sentence.startswith("chunking.first_chunk_frames = 1 (default 2): TTFA p99 1")
    assert evidence.sentence.count("TTFA p99") == 1


def test_the_pareto_front_keeps_the_points_nothing_beats_on_both_axes() -> None:
    points = [(100.0, 5.0), (120.0, 4.0), (150.0, 8.0), (90.0, 3.0), (200.0, 7.0)]
    assert _front(points) == [(90.0, 3.0), (100.0, 5.0), (150.0, 8.0)]


def test_a_pick_the_verification_does_not_confirm_leaves_the_default_recommended() -> None:
    r = report(Slo())
    assert r.verification is not None and r.recommended is r.result.recommended  # +20%, outside the noise
    r.verification = dataclasses.replace(r.verification, gain=-0.05, within_noise=True)
    assert r.recommended is r.result.default
    assert "Not confirmed, so the default stays the recommendation" in r.verdict()
