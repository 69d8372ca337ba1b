"""The Benchmark view's sweep of a remote OpenAI-compatible server by URL (our own HTTP API on a tiny engine, served
for real in a thread), what it says when the server cannot be used, and the Runs view opening each kind of run with
its own figures only."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go
import pytest

from engine import Engine, EngineConfig
from tests.ui.conftest import RunningApp
from tests.ui.live_server import Live, serving
from ui.profiled import ProfiledRun, run_requests
from ui.run_store import RunRecord, RunStore
from ui.server import create_server
from ui.views.benchmark import COLUMNS, BenchmarkForm, benchmark
from ui.views.runs import open_run
from ui.views.workload import Workload


# one engine behind a real server for the module: starting one costs seconds
@pytest.fixture(scope="module")
def remote(checkpoints) -> Iterator[Live]:
    with Engine(EngineConfig(model=str(checkpoints["base"]))) as engine, serving(create_server(engine)) as live:
        yield live


def sweep_of(url: str, levels: str = "1,2") -> BenchmarkForm:
    return BenchmarkForm([], levels, 2, "Remote.", 6, url)


def closed_port() -> int:
    """A port nothing listens on once this returns."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_remote_server_is_swept_with_the_client_side_figures(running_app: RunningApp, remote: Live) -> None:
    figure, table, files = asyncio.run(benchmark(running_app.state, sweep_of(remote.url)))
    rows = [dict(zip(COLUMNS, row, strict=True)) for row in table]
    assert [row["concurrency"] for row in rows] == [1, 2]
    assert all(row["requests"] == 2 and row["errors"] == 0 and row["ttfa_s_p50"] > 0 for row in rows)
    for row in rows:  # continuity of the multi-chunk requests, or an empty cell when none came in several chunks
        assert all(row[c] is None or 0 <= row[c] <= 1 for c in ("continuity_c50", "continuity_c100", "continuity_c200"))
    assert figure.layout.xaxis.tickvals == (1, 2)  # whole concurrency levels only
    assert sorted(Path(f).name for f in files) == ["bench.csv", "bench.html", "bench.json"]
    record = running_app.state.runs.newest_first()[0]
    assert (record.kind, record.config, record.figure) == ("benchmark", f"remote: {remote.url}", figure)


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("ftp://127.0.0.1:8000", "server URL: a server URL starts with http:// or https://"),
        ("http://user:secret@127.0.0.1:8000", "server URL: the URL may hold no user name, password"),
        (f"http://127.0.0.1:{closed_port()}", "answered no warm-up request: could not connect to the server"),
    ],
)
def test_a_server_that_cannot_be_used_is_said_in_words_and_records_no_run(
    running_app: RunningApp, url: str, said: str
) -> None:
    before = len(running_app.state.runs.newest_first())
    with pytest.raises(gr.Error) as refused:
        asyncio.run(benchmark(running_app.state, sweep_of(url, "1")))
    assert said in refused.value.message and "Error" not in refused.value.message  # no exception names
    assert len(running_app.state.runs.newest_first()) == before


def test_runs_reopen_each_kind_with_its_own_figures_and_clear_the_rest(remote: Live, tmp_path: Path) -> None:
    engine = remote.engine
    work = Workload.of(engine.info, "Hi.", 4)

    def profiled(label: str) -> ProfiledRun:
        requests = work.requests(engine.config, 1, 0)
        return asyncio.run(run_requests(engine, requests, tmp_path / label, label=label))

    runs = RunStore(tmp_path / "runs")
    chart, search = go.Figure(layout={"title": "sweep"}), go.Figure(layout={"title": "search"})
    for record in (
        RunRecord("synthesize-1", "synthesize", "one", "tiny", 0.0, [profiled("one")]),
        RunRecord("compare-2", "compare", "A against B", "tiny | tiny", 0.0, [profiled("A"), profiled("B")]),
        RunRecord("benchmark-3", "benchmark", "sweep", "tiny", 0.0, figure=chart),
        RunRecord("tune-4", "tune", "tune", "tiny", 0.0, figure=search),
    ):
        runs.add(record)

    def shown(run_id: str) -> list[tuple[str, bool]]:
        """(label, visible) of the three plots, each of which is set on every open."""
        _cards, *plots, _files = open_run(runs, run_id)
        assert all({"value", "label", "visible"} <= set(p) for p in plots)
        return [(p["label"], p["visible"]) for p in plots]

    one_run = [("timeline", True), ("utilization", True), ("overhead breakdown", True)]
    assert shown("synthesize-1") == one_run
    assert shown("compare-2") == [("both timelines, on one axis", True), ("", False), ("", False)]
    _, first, *_ = open_run(runs, "benchmark-3")
    assert first["value"] is chart and shown("benchmark-3")[1:] == [("", False), ("", False)]
    _, first, *_ = open_run(runs, "tune-4")
    assert first["value"] is search and first["label"] == "the search: every candidate measured"
    assert shown("synthesize-1") == one_run  # back to one run: all three of its own again
    with pytest.raises(gr.Error, match="no run 'gone'"):
        open_run(runs, "gone")


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
