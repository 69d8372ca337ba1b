"""Figure builders produce the traces a reader expects: lanes, one colour per request, transfers, lines per config."""

from __future__ import annotations

import pytest

from profiling.figures import concurrency_figure, overhead_figure, request_colors, timeline_figure, utilization_figure
from profiling.metrics import request_breakdowns, request_metrics, run_metrics
from telemetry.events import Timeline


def test_timeline_has_a_lane_per_stage_and_process_and_a_colour_per_request(run: Timeline):
    fig = timeline_figure(run)
    lanes = list(fig.layout.yaxis.categoryarray)
    # the two prompt preps overlap, and so do the two handoffs: each gets a second lane
    assert lanes[:5] == [
        "engine · engine",
        "engine · engine · overlap 2",
        "engine · transport",
        "engine · transport · overlap 2",
        "engine · code2wav",
    ]
    assert "talker-worker · talker" in lanes
    assert "talker-worker · talker · overlap 2" in lanes  # the predictor under a step
    assert lanes[-2:] == ["request a", "request b"]
    colors = request_colors(run.requests())
    bars = {t.name: t for t in fig.data if t.type == "bar" and t.showlegend is not False}
    assert bars["request a"].marker.color == colors["a"] != colors["b"] == bars["request b"].marker.color
    assert len(bars["batched"].x) == 1 + 4 + 4 + 1  # prefill, decode steps, predictor, code2wav decode
    transport = [
        s
        for t in fig.data
        if t.type == "bar"
        for s, y in zip(t.marker.pattern.shape or (), t.y, strict=False)
        if "transport" in y
    ]
    assert transport and set(transport) == {"/"}
    milestones = [t for t in fig.data if t.type == "scatter"]
    assert len(milestones) == 2 and len(milestones[0].x) == 8  # 7 milestones and one chunk


def test_utilization_has_a_cpu_line_per_process(run: Timeline):
    fig = utilization_figure(run)
    assert sorted(t.name for t in fig.data) == ["cpu_percent · engine", "cpu_percent · talker-worker"]
    assert list(fig.data[0].y) == [55.0, 60.0, 65.0, 70.0]


def test_overhead_stacks_stages_transfers_and_queue_per_request(run: Timeline):
    fig = overhead_figure(request_breakdowns(run))
    parts = {t.name: list(t.y) for t in fig.data}
    assert fig.layout.barmode == "stack"
    assert parts["talker"] == pytest.approx([0.012, 0.012])
    assert parts["queue"] == pytest.approx([0.0, 0.001])
    assert parts["transfer handoff"] == pytest.approx([0.002, 0.004])


def test_overhead_marks_each_request_end_to_end_beside_its_overlapping_parts(run: Timeline):
    fig = overhead_figure(request_breakdowns(run), end_to_end_s={"a": 0.01, "b": 0.02})
    (total,) = [t for t in fig.data if t.name == "◆ end-to-end"]
    assert list(total.y) == [0.01, 0.02] and "stages overlap" in fig.layout.annotations[0].text


def test_concurrency_plot_has_one_line_per_config():
    def metrics(c: int):
        m = request_metrics("r", 0.0, [0.1 * c, 0.2 * c], [24000, 24000], 24000)
        return run_metrics([m] * c, wall_s=1.0)

    results = {"uni/uni": {c: metrics(c) for c in (1, 4, 8)}, "mp/mp": {c: metrics(c) for c in (1, 4)}}
    fig = concurrency_figure(results)
    assert [t.name for t in fig.data if t.showlegend] == ["uni/uni", "mp/mp"]
    ttfa = [t for t in fig.data if t.xaxis == "x"]
    assert list(ttfa[0].x) == [1, 4, 8] and list(ttfa[0].y) == pytest.approx([0.1, 0.4, 0.8])


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
