"""Tune on the tiny model: the workload spec, the knob table, and a whole search from the command line that writes a
config `app.py --config` loads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from engine import EngineConfig
from engine.config import ConfigError
from profiling import tune
from profiling.evaluate import EngineEvaluator
from profiling.search import Summary
from profiling.space import KNOBS, apply, candidate_points, config_yaml, space
from profiling.workload import Workload
from telemetry.events import ADMITTED, Timeline

WORKLOADS = sorted((Path(__file__).parents[2] / "configs" / "workloads").glob("*.yaml"))


@pytest.mark.parametrize("path", WORKLOADS, ids=lambda p: p.stem)
def test_the_shipped_workloads_load_and_their_space_is_made_of_knobs(path: Path) -> None:
    workload = Workload.from_yaml(path)
    assert workload.name == path.stem and workload.requests(2, None, "r")[1].request_id == "r1"
    for point in candidate_points(EngineConfig(), space(KNOBS, workload.space)):
        apply(EngineConfig(), point)


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"arrival": {"concurency": 8}}, "arrival.concurency"),
        ({"arrival": {"pattern": "poisson"}}, "arrival.rate"),
        ({"slo": {"ttfa_p99": 0.5}}, "slo.ttfa_p99"),
        ({"slo": {"underrun_p99_s": -1}}, "slo.underrun_p99_s"),
        ({"tasks": {"voice_clone": 1, "cloning": 1}}, "tasks.cloning"),
        ({"text": {"source": "words", "words": [40, 8]}}, "text.words"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"objective": "fastest"}, "objective"),
        ({"budget": "10m"}, "budget"),
    ],
)
def test_a_bad_workload_key_is_refused_by_name(raw: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        Workload.from_dict(raw)


def test_request_i_is_the_same_in_every_run_and_poisson_arrivals_are_seeded() -> None:
    workload = Workload.from_dict(
        {
            "arrival": {"pattern": "poisson", "rate": 4.0},
            "text": {"source": "words", "words": [3, 9]},
            "max_new_tokens": [10, 20],
        }  # fmt: skip
    )
    a, b = workload.requests(5, None, "a"), workload.requests(3, None, "b")
    assert [(r.text, r.max_new_tokens, r.seed) for r in a[:3]] == [(r.text, r.max_new_tokens, r.seed) for r in b]
    assert all(3 <= len(r.text.split()) <= 9 and 10 <= r.max_new_tokens <= 20 for r in a)
    arrivals = workload.arrivals(5)
    assert arrivals == workload.arrivals(5) and arrivals[0] == 0 and arrivals == sorted(arrivals)
    assert Workload().arrivals(5) is None  # a closed loop has no arrival times


def test_a_knob_is_a_dotted_key_of_the_engine_config_and_the_result_loads_back(tmp_path: Path) -> None:
    config = apply(EngineConfig(), {"code2wav.executor": "mp", "chunking.first_chunk_frames": 1})
    path = tmp_path / "recommended.yaml"
    path.write_text(config_yaml(config, "why:\nbecause"))
    assert EngineConfig.from_yaml(path) == config and path.read_text().startswith("# why:\n# because\n")
    with pytest.raises(ConfigError, match="talker.max_num_seqs"):
        apply(EngineConfig(), {"talker.max_num_seqs": 0})
    with pytest.raises(ConfigError, match="unknown knob"):
        space(KNOBS, {"talker.speed": [1, 2]})


def test_the_candidates_start_from_the_default_and_each_knob_alone() -> None:
    knobs = {"chunking.first_chunk_frames": (1, 2, 4), "limits.credits": (2, 4)}
    points = candidate_points(EngineConfig(), knobs, max_candidates=5)
    assert points[0] == {"chunking.first_chunk_frames": 2, "limits.credits": 4}  # EngineConfig()'s own values
    alone = [("chunking.first_chunk_frames", 1), ("chunking.first_chunk_frames", 4), ("limits.credits", 2)]
    assert points[1:4] == [{**points[0], key: value} for key, value in alone]
    assert len(points) == 5 and len({tuple(p.values()) for p in points}) == 5


@pytest.mark.parametrize(("text", "seconds"), [("600", 600), ("90s", 90), ("10m", 600), ("1.5h", 5400)])
def test_a_budget_is_a_duration(text: str, seconds: float) -> None:
    assert tune.parse_budget(text) == seconds


def test_an_open_loop_lets_each_request_in_at_its_arrival(tmp_path: Path) -> None:
    workload = Workload.from_dict(
        {"arrival": {"pattern": "poisson", "rate": 10.0}, "text": {"length": "short"}, "max_new_tokens": 3}
    )
    with EngineEvaluator(EngineConfig(), workload, warmup=1, save_runs=tmp_path) as evaluator:
        m = evaluator.measure({}, 4)
    assert m.errors == 0 and m.signals["talker_busy_pct"] > 0
    (run,) = tmp_path.iterdir()
    timeline = Timeline.from_bytes((run / "timeline.json").read_bytes())
    admitted = sorted(e.start_ns for e in timeline.events if e.name == ADMITTED)
    offsets = workload.arrivals(4)
    assert all((t - admitted[0]) / 1e9 >= offset - 1e-3 for t, offset in zip(admitted, offsets, strict=True))


def test_a_search_on_the_tiny_model_recommends_its_best_candidate_within_noise(tmp_path: Path) -> None:
    """Four candidates in the engine's process (no worker start-ups), runs of 4 then 8 requests, a 60 s budget."""
    workload = tmp_path / "small.yaml"
    workload.write_text(
        yaml.safe_dump(
            {
                "arrival": {"pattern": "closed", "concurrency": 2},
                "text": {"length": "short"},
                "max_new_tokens": 10,
                "slo": {"ttfa_p99_s": 30.0},
                "objective": "throughput",
                "space": {"chunking.first_chunk_frames": [1, 2], "code2wav.max_num_seqs": [1, 4]},
            }
        )
    )
    out = tmp_path / "out"
    report = tune.main([str(workload), "--budget", "60s", "--out", str(out), "--min-requests", "4",
                        "--max-requests", "8"])  # fmt: skip
    result = report.result
    rec = result.recommended
    assert rec is not None and result.spent_s + report.verify_s <= 60  # the verification within the budget too

    config = EngineConfig.from_yaml(out / "recommended.yaml")  # what app.py --config takes
    final = report.recommended  # the search's pick, unless the verification did not confirm it: then the default
    assert final in (rec, result.default)
    assert config == apply(EngineConfig.from_yaml("configs/default.yaml"), final.values)

    n = result.compared_at  # no candidate measured there beats the recommendation by more than the reported noise
    scores = {c.id: Summary.of("throughput", c.runs[n]).score for c in result.candidates if result.meets(c, n)}
    top = max(scores, key=scores.__getitem__)
    assert scores[top] - scores[rec.id] <= max(result.noise[top], result.noise[rec.id])

    rows = list(csv.DictReader((out / "tune.csv").open()))
    assert {r["id"] for r in rows} == {c.id for c in result.candidates} and "spread" in rows[0]
    doc = json.loads((out / "tune.json").read_text(), parse_constant=pytest.fail)  # strict JSON: no NaN
    assert doc["search_pick"] == rec.id and doc["recommended"] == final.id
    measured = [m for c in doc["candidates"] for ms in c["runs"].values() for m in ms]
    assert measured and all(m["signals"]["talker_busy_pct"] > 0 for m in measured)  # the profiler's own figures
    assert "Plotly.newPlot" in (out / "tune.html").read_text()
    changed = [k for k in rec.values if rec.values[k] != result.default.values[k]]
    assert [e.knob for e in report.evidence] == changed  # one sentence per knob that differs from the default
    assert (report.verification is not None) == bool(changed)


def test_against_a_server_only_the_clients_concurrency_is_searched(server: str, tmp_path: Path) -> None:
    workload = tmp_path / "remote.yaml"
    workload.write_text(yaml.safe_dump({"max_new_tokens": 3, "space": {"concurrency": [1, 2]}}))
    report = tune.main([str(workload), "--url", server, "--budget", "60s", "--out", str(tmp_path), "--min-requests",
                        "2", "--verify-rounds", "1"])  # fmt: skip
    assert report.result.recommended is not None and set(report.result.recommended.values) == {"concurrency"}
    assert not (tmp_path / "recommended.yaml").exists()  # the server's engine config is not ours to write
    assert all(m.errors == 0 for c in report.result.candidates for ms in c.runs.values() for m in ms)
