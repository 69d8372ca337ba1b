"""Metric functions on hand-made chunk timings, with answers worked out by hand."""

from __future__ import annotations

import math

import pytest

from profiling.metrics import (
    Continuity,
    continuity,
    ipc_overhead,
    percentiles,
    request_breakdowns,
    request_metrics,
    run_metrics,
    timeline_request_metrics,
    underrun,
)
from telemetry.events import Timeline

RATE = 24000


def test_a_stream_ahead_of_its_player_has_no_underrun():
    # start at 0; 1 s of audio arrives at 0.5, 1.0 and 1.5 s
    m = request_metrics("a", 0.0, [0.5, 1.0, 1.5], [RATE, RATE, RATE], RATE)
    assert m.ttfa_s == pytest.approx(0.5)
    assert m.audio_s == pytest.approx(3.0)
    assert m.rtf == pytest.approx(1.5 / 3.0)
    assert m.e2e_s == pytest.approx(1.5)
    assert (m.underrun_s, m.underrun_events) == (0.0, 0)


def test_a_late_chunk_starves_the_player_by_the_gap():
    # 0.2 s of audio at t=0.2; the next chunk only at 0.7: the player ran dry for 0.5 - 0.2 = 0.3 s
    worst, events = underrun([0.2, 0.7, 0.9], [int(0.2 * RATE), RATE, RATE], RATE)
    assert worst == pytest.approx(0.3)
    assert events == 1  # at 0.9 the buffer holds 1.2 s against 0.7 s played


def test_deficits_add_up_when_the_stream_never_catches_up():
    # 0.1 s chunks every 0.2 s: behind by 0.1 s at the second chunk, 0.2 s at the third
    worst, events = underrun([1.0, 1.2, 1.4], [2400, 2400, 2400], RATE)
    assert worst == pytest.approx(0.2) and events == 2


def test_a_chunk_exactly_on_time_is_not_an_underrun():
    assert underrun([0.0, 0.5], [RATE // 2, RATE // 2], RATE) == (0.0, 0)


def test_empty_chunks_do_not_count_as_first_audio():
    m = request_metrics("a", 1.0, [1.1, 1.3, 1.5], [0, 4800, 4800], RATE, end_s=1.6)
    assert m.ttfa_s == pytest.approx(0.3)
    assert m.e2e_s == pytest.approx(0.6)
    assert m.underrun_s == pytest.approx(0.0)  # 0.2 s of audio at 1.3; the next at 1.5: exactly on time


def test_percentiles_interpolate_linearly():
    p = percentiles([1, 2, 3, 4, 5])
    assert (p.p50, p.p90, p.p95, p.p99, p.mean, p.max) == pytest.approx((3.0, 4.6, 4.8, 4.96, 3.0, 5.0))
    assert math.isnan(percentiles([]).p50)


def test_run_metrics_give_audio_throughput_and_continuity():
    ok = request_metrics("a", 0.0, [0.5, 1.0, 1.5], [RATE] * 3, RATE)
    starved = request_metrics("b", 0.0, [0.2, 0.7, 0.9], [int(0.2 * RATE), RATE, RATE], RATE)
    run = run_metrics([ok, starved], wall_s=2.0)
    assert run.audio_s == pytest.approx(3.0 + 2.2)
    assert run.audio_s_per_s == pytest.approx(5.2 / 2.0)
    assert run.continuity_ok_rate == 0.5
    assert (run.continuity.c50, run.continuity.c100, run.continuity.c200) == (0.5, 0.5, 0.5)  # b starved 300 ms
    assert run.underrun_s.max == pytest.approx(0.3)
    d = run.to_dict()
    assert d["ttfa_s"]["p50"] == pytest.approx(0.35) and d["requests"] == 2


def test_continuity_counts_multi_chunk_requests_by_their_worst_underrun():
    shares = continuity([0.0, 0.04, 0.08, 0.15, 0.5])
    assert (shares.c50, shares.c100, shares.c200, shares.requests) == (0.4, 0.6, 0.8, 5)
    assert continuity([0.05, 0.1, 0.2]) == Continuity(1 / 3, 2 / 3, 1.0, 3)  # at the threshold counts as within
    assert math.isnan(continuity([]).c50)


def test_continuity_of_no_multi_chunk_request_is_nan_and_of_all_dry_requests_zero():
    none = continuity([])
    assert none.requests == 0 and all(math.isnan(v) for v in (none.c50, none.c100, none.c200))
    assert continuity([0.201, 0.3]) == Continuity(0.0, 0.0, 0.0, 2)  # every request ran dry past 200 ms
    assert continuity([0.0]) == Continuity(1.0, 1.0, 1.0, 1)  # never dry
    assert continuity((0.06, 0.12)) == Continuity(0.0, 0.5, 1.0, 2)  # any sequence, shares rise with the bound


def test_one_chunk_requests_are_left_out_of_continuity():
    one = request_metrics("one", 0.0, [0.5], [RATE], RATE)
    late = request_metrics("late", 0.0, [0.1, 0.6], [int(0.1 * RATE), RATE], RATE)  # 400 ms dry
    assert run_metrics([one, late], wall_s=1.0).continuity == Continuity(0.0, 0.0, 0.0, 1)


def test_an_empty_last_chunk_does_not_make_a_request_multi_chunk():
    # a request that ended on a chunk boundary: its audio in one chunk, then an empty last one
    ended = request_metrics("ended", 0.0, [0.1, 0.2], [RATE, 0], RATE)
    assert (ended.chunks, ended.audio_chunks) == (2, 1)
    assert run_metrics([ended], wall_s=1.0).continuity.requests == 0


def test_server_side_metrics_come_from_the_timeline(run: Timeline):
    by_request = {m.request: m for m in timeline_request_metrics(run, RATE)}
    assert by_request["a"].ttfa_s == pytest.approx(0.022)  # admitted at 0 ms, first chunk at 22 ms
    assert by_request["b"].ttfa_s == pytest.approx(0.020)
    assert by_request["a"].audio_s == pytest.approx(7680 / RATE)
    assert by_request["a"].e2e_s == pytest.approx(0.023)  # to FINISHED


def test_breakdown_counts_batched_work_for_every_request_in_the_batch(run: Timeline):
    b = request_breakdowns(run)
    # prompt 3 ms; talker = prefill 4 ms + 4 decode steps of 2 ms (the nested predictor is not added); code2wav 3 ms
    for r in "ab":
        assert b[r].stage_s == pytest.approx({"prompt": 0.003, "talker": 0.012, "code2wav": 0.003})
    assert b["a"].transfer_s == pytest.approx({"serialize": 0.001, "handoff": 0.002})
    assert b["b"].transfer_s == pytest.approx({"copy": 0.001, "handoff": 0.004})
    assert (b["a"].queue_s, b["b"].queue_s) == (0.0, pytest.approx(0.001))
    assert b["a"].bytes == 512


def test_ipc_overhead_sums_the_transport_spans(run: Timeline):
    o = ipc_overhead(run)
    assert (o.bytes, o.transfers) == (1024, 2)
    assert (o.serialize_s, o.copy_s, o.wait_s) == pytest.approx((0.001, 0.001, 0.0))
    assert o.handoff_s.mean == pytest.approx(0.003) and o.handoff_s.max == pytest.approx(0.004)
    assert o.to_dict()["handoff_s"]["p50"] == pytest.approx(0.003)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
