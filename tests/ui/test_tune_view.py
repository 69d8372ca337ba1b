"""The Tune view's handler on the tiny model: the chart fills in as runs finish, the search runs on the lab engine,
and the last update carries the recommended config and the files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from engine import EngineConfig
from ui.state import AppState
from ui.views import tune as tune_view

WORKLOAD = {
    "arrival": {"pattern": "closed", "concurrency": 2},
    "text": {"length": "short"},
    "max_new_tokens": 4,
    "space": {"chunking.first_chunk_frames": [1, 2]},
}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):
    """One app state for the module: building its serving engine takes seconds."""
    root = tmp_path_factory.mktemp("tune-view")
    app = AppState.start(EngineConfig(), runs_dir=root / "runs", data_dir=root / "data")
    yield app
    app.close()


def form(app: AppState, workload: str, budget: str = "30s") -> tune_view.TuneForm:
    """The page's form as a visitor fills it: the first preset, no knobs ticked (the workload has `space:`)."""
    return tune_view.TuneForm(next(iter(tune_view.preset_configs(app.engines.config))), workload, budget, [], 4)


async def collect(app: AppState, workload: str, budget: str = "30s") -> list[tuple]:
    return [u async for u in tune_view.run_tune(app, form(app, workload, budget))]


def test_a_tune_from_the_page_fills_the_chart_in_and_ends_with_the_config(app: AppState) -> None:
    updates = asyncio.run(collect(app, yaml.safe_dump(WORKLOAD)))

    start, *searching, (chart, rows, findings, config, files) = updates
    status = "*Searching: runs finished 0, candidates measured 0 of 2+, 0 s of a 30 s budget.*"
    assert start == (None, [], status, "", [])
    assert searching and all(u[2].startswith("*Searching: ") for u in searching)  # one update per finished run
    assert [u[2].split(",")[0] for u in searching[:2]] == ["*Searching: runs finished 1", "*Searching: runs finished 2"]
    assert len(searching[0][0].data) >= 1 and len(rows) == 2  # both candidates in the final table
    assert findings.startswith("**2 candidates")
    assert EngineConfig.from_dict(yaml.safe_load(config)).chunking.first_chunk_frames in (1, 2)
    assert {Path(f).name for f in files} == {"recommended.yaml", "tune.html", "tune.json", "tune.csv"}
    assert app.engines.lab.config is not None  # the search ran on the lab engine, not on the serving engine
    (record,) = [r for r in app.runs.newest_first() if r.kind == "tune"]
    assert record.files == files


def test_a_bad_workload_is_refused_with_the_key_named(app: AppState) -> None:
    with pytest.raises(tune_view.gr.Error, match="arrival.concurency"):
        asyncio.run(collect(app, "arrival: {concurency: 2}"))


def test_the_view_builds_with_the_shipped_workloads_to_choose_from(app: AppState) -> None:
    with tune_view.gr.Blocks() as blocks:
        tune_view.build(app)
    dropdowns = [b for b in blocks.blocks.values() if isinstance(b, tune_view.gr.Dropdown)]
    workloads = next(d for d in dropdowns if d.label == "workload (configs/workloads/)")
    assert {"prompt-set-c1.yaml", "prompt-set-c8.yaml", "prompt-set-c32.yaml"} <= {c[0] for c in workloads.choices}


def test_a_budget_past_the_page_cap_is_refused_by_name(app: AppState) -> None:
    with pytest.raises(tune_view.gr.Error, match="budget"):
        asyncio.run(collect(app, yaml.safe_dump(WORKLOAD), budget="5h"))
