"""The Compare view's handler on the tiny model: our engine against our own HTTP server started as a "remote" side
(the same requests, the same client-side figures, downloads named by side, progress per side), the lab engines found
warm by a second click, and a URL that is wrong, unreachable or answers an error refused in words."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import pytest

from engine import EngineConfig
from tests.ui.live_server import Live, serving
from ui.engines import preset_configs
from ui.remotes import ANY, RemoteServers
from ui.server import create_server
from ui.state import AppState
from ui.uploads import Uploads
from ui.views.compare import CompareForm, compare

OURS = "current · uni-uni"  # a lab engine with the serving engine's settings
OTHER = "default.yaml"  # also uni-uni, with other limits: a second lab engine that builds in a second


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppState]:
    """One app for the module: its serving engine takes seconds to build."""
    root = tmp_path_factory.mktemp("compare")
    app = AppState.start(EngineConfig(), runs_dir=root / "runs", data_dir=root / "data", remotes=RemoteServers((ANY,)))
    yield app
    app.close()


@pytest.fixture(scope="module")
def remote(app: AppState) -> Iterator[Live]:
    """Our own HTTP API on the app's serving engine, on a real socket: the "remote" server of a comparison."""
    with serving(create_server(app.engines.serving)) as live:
        yield live


class Progress:
    """Stands in for `gr.Progress`: keeps what the page would show."""

    def __init__(self) -> None:
        self.shown: list[tuple[float, str]] = []

    def __call__(self, share: float, desc: str | None = None) -> None:
        self.shown.append((share, desc or ""))


def click(app: AppState, a: str = OURS, b: str = OTHER, url_a: str = "", url_b: str = "") -> tuple:
    """One Compare click with 2 requests of 8 frames, 2 at a time; (figure, table, verdict, files, progress, what the
    page then says of the lab engines)."""
    form = CompareForm(a, b, "Compare me.", 2, 2, 8, 0, None, url_a, url_b)
    progress = Progress()
    out = asyncio.run(compare(app, Uploads(gr.Blocks()), form, progress=progress))  # type: ignore[arg-type]
    return (*out, progress.shown, app.engines.lab.status().markdown())


def test_our_engine_against_our_own_server_as_a_remote_side(app: AppState, remote: Live) -> None:
    fig, table, verdict, files, shown, lab = click(app, url_b=remote.url)
    remote_label = f"B · {remote.url}"
    assert (
        "faster than" in verdict
        and "for this workload" in verdict
        and f"A · {OURS}" in verdict
        and remote_label in verdict
    )
    assert "not sampled from here" in verdict  # a remote's CPU is not ours to measure, and the page says so
    assert [a.text for a in fig.layout.annotations] == [f"A · {OURS}", remote_label]  # titles name each side once
    rows = {row[0]: row[1:] for row in table}
    assert all(v > 0 for v in rows["wall time (s)"][:2] + rows["time to first audio p50 (s)"][:2])
    assert (
        rows["CPU % (engine processes, 100 = a core)"][0] > 0
        and rows["CPU % (engine processes, 100 = a core)"][1] is None
    )
    prefix = f"B-remote-127.0.0.1-{remote.port}"
    assert sorted(Path(f).name for f in files) == sorted(
        [f"A-uni-uni-{n}" for n in ("trace.json", "metrics.json")]
        + [f"{prefix}-{n}" for n in ("trace.json", "metrics.json")]
    )
    (record,) = [r for r in app.runs.newest_first() if r.files == files]
    ours, theirs = (run.result for run in record.profiled)
    assert ours.metrics.audio_s == theirs.metrics.audio_s == 2 * 7 * 0.08  # the same requests: 8 draws, 7 frames each
    assert len(theirs.per_request) == 2 and theirs.timeline.requests() == ["r0", "r1"]  # what the client saw
    descs = [d for _, d in shown]
    assert {"A: 1/2 requests", "A: 2/2 requests", "B: 1/2 requests", "B: 2/2 requests"} <= set(descs)
    assert [s for s, _ in shown] == sorted(s for s, _ in shown)  # the bar only moves forward
    assert "tiny-base · talker uni · code2wav uni" in lab


def test_a_second_click_finds_both_engines_warm(app: AppState) -> None:
    presets = preset_configs(app.engines.config)
    click(app)
    engines = [app.engines.lab.engine_if_up(presets[name]) for name in (OURS, OTHER)]
    assert all(engines)
    *_, shown, lab = click(app)
    assert [app.engines.lab.engine_if_up(presets[name]) for name in (OURS, OTHER)] == engines  # none built again
    assert [d for _, d in shown if "engine" in d] == [
        "A: engine warm (tiny-base · talker uni · code2wav uni · cpu)",
        "B: engine warm (tiny-base · talker uni · code2wav uni · cpu)",
    ]
    assert lab.startswith("**Warm lab engines (2 of at most 3):**")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("localhost:8000", "A: a server URL starts with http:// or https://"),
        ("file:///etc/passwd", "A: a server URL starts with http:// or https://"),
        ("http://", "A: the URL names no host"),
        ("http://user:secret@127.0.0.1:8000", "A: the URL may hold no user name, password"),
        ("http://127.0.0.1:99999", "A: that is not a valid URL"),
    ],
)
def test_a_url_that_is_no_server_address_is_refused_before_anything_runs(app: AppState, url: str, message: str) -> None:
    before = len(app.runs.newest_first())
    with pytest.raises(gr.Error, match=message):
        click(app, url_a=url)
    assert len(app.runs.newest_first()) == before


def test_a_server_that_cannot_be_reached_or_answers_an_error_is_named_in_words(app: AppState, remote: Live) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(gr.Error) as unreachable:
        click(app, url_a=closed)
    assert unreachable.value.message == f"A · {closed}: could not connect to the server"
    with pytest.raises(gr.Error) as refused:
        click(app, url_a=remote.url + "/not-the-api")
    assert refused.value.message == f"A · {remote.url}/not-the-api: HTTP 404: Not Found"


def test_a_server_the_operator_did_not_allow_is_refused_by_name(app: AppState, remote: Live) -> None:
    """The page cannot make this server send requests to a host of its choosing (`--remote-servers`)."""
    other = remote.url.rsplit(":", 1)[0] + ":9"
    only_remote = dataclasses.replace(app, remotes=RemoteServers((remote.url,)))
    with pytest.raises(gr.Error, match=f"A: this app may reach only {remote.url}"):
        click(only_remote, url_a=other)
    with pytest.raises(gr.Error, match="B: remote servers are off on this app"):
        click(dataclasses.replace(app, remotes=RemoteServers()), url_b=remote.url)
