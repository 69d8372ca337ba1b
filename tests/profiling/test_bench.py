"""The benchmarks as one command: a small concurrency sweep against the embedded engine and against our own HTTP
server, and each other subcommand once on the tiny model."""

from __future__ import annotations

import asyncio
import csv
import json
import re
import socket
from pathlib import Path

import pytest
import torch
import yaml

from profiling import bench, sweep
from profiling.bench.checkpoint import build_random
from profiling.bench.prompt_set import PromptSet
from profiling.gpu_idle import IdleSplit
from profiling.metrics import request_metrics
from profiling.speech_client import run_requests, speech_url

FRAMES = 6
SWEEP = ["--concurrency", "1", "2", "--requests-per-level", "2", "--warmup", "1"]
SWEEP += ["--max-new-tokens", str(FRAMES + 1), "--prompts", "en_short", "zh_short"]


def check_outputs(out: Path, series: list[str]) -> list[dict]:
    doc = json.loads((out / "bench.json").read_text(), parse_constant=pytest.fail)  # strict JSON: no NaN
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert [(r["series"], int(r["concurrency"])) for r in rows] == [(s, c) for c in (1, 2) for s in series]
    for level in doc["levels"]:
        assert level["errors"] == 0, level["error_messages"]
        assert level["requests"] == 2
        assert level["audio_s"] == pytest.approx(2 * FRAMES * 0.08)  # every sample of every stream counted
        assert 0 < level["ttfa_s_p50"] <= level["e2e_s_p50"]
        shares = [level[f"continuity_{c}"] for c in ("c50", "c100", "c200")]
        assert all(share is None or 0 <= share <= 1 for share in shares)  # None: no multi-chunk request
    assert {"continuity_c50", "continuity_c100", "continuity_c200"} <= set(rows[0])
    page = (out / "bench.html").read_text()
    assert "Plotly.newPlot" in page and "<script src=" not in page  # plotly.js inlined: opens offline
    return doc["levels"]


def test_a_sweep_against_the_embedded_engine_with_recording_on_and_off(checkpoints, tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": str(checkpoints["base"]), "talker": {"max_num_seqs": 4}}))
    result = bench.main(
        ["sweep", "--config", str(config), *SWEEP, "--recording", "both", "--out", str(tmp_path / "out")]
    )
    levels = check_outputs(tmp_path / "out", ["tiny · recording on", "tiny · recording off"])
    assert set(result.recording_cost()) == {1, 2}
    assert all(level["cpu_percent"] > 0 for level in levels)  # the engine's process, sampled at every level
    assert all((level["gpu_busy_percent"] is None) == (not torch.cuda.is_available()) for level in levels)


def test_a_captured_sweep_keeps_each_runs_traces_and_the_gpu_idle_columns(checkpoints, tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": str(checkpoints["base"])}))
    one_run = ["--concurrency", "1", "--requests-per-level", "1", "--warmup", "0", "--max-new-tokens", "4"]
    bench.main(["sweep", "--config", str(config), *one_run, "--capture", "--out", str(tmp_path / "out")])
    assert list((tmp_path / "out" / "runs" / "c1-recon-0" / "tb").glob("engine.*.pt.trace.json"))
    (level,) = json.loads((tmp_path / "out" / "bench.json").read_text())["levels"]
    assert level["series"] == "tiny · recording on · captured"
    assert [level[f"{part}_ms"] for part in sweep.IDLE_PARTS] == [None] * 4  # a CPU config: no GPU ops to split


def test_a_level_sums_the_gpu_idle_split_of_its_runs() -> None:
    split = IdleSplit(window_us=10_000, gpu_busy_us=4_000, gpu_waiting_for_host_us=3_000, launch_latency_us=2_000,
                      host_waiting_for_kernel_us=1_500)  # fmt: skip
    run = sweep.Repeat([], 1.0, [], gpu_idle=split)
    level = sweep.level_of("s", 1, [run, run])
    row = level.row()
    assert [row[f"{part}_ms"] for part in sweep.IDLE_PARTS] == [8.0, 6.0, 4.0, 3.0]
    assert sweep.level_of("s", 1, [sweep.Repeat([], 1.0, [])]).gpu_idle_ms == {}  # nothing captured


def test_the_json_and_csv_carry_each_levels_continuity(tmp_path: Path) -> None:
    rate = 24000
    steady = request_metrics("steady", 0.0, [0.1, 0.2], [rate, rate], rate)  # never dry
    late = request_metrics("late", 0.0, [0.1, 0.35], [rate // 10, rate], rate)  # 150 ms dry
    alone = request_metrics("alone", 0.0, [0.1], [rate], rate)  # one chunk: left out
    level = sweep.level_of("s", 1, [sweep.Repeat([steady, late, alone], 1.0, [])])
    out = sweep.Bench([level], {}).write(tmp_path)
    (row,) = json.loads(out["json"].read_text())["levels"]
    assert (row["continuity_c50"], row["continuity_c100"], row["continuity_c200"]) == (0.5, 0.5, 1.0)
    (line,) = csv.DictReader(out["csv"].open())
    assert (line["continuity_c50"], line["continuity_c100"], line["continuity_c200"]) == ("0.5", "0.5", "1.0")


def test_a_sweep_of_a_server_that_cannot_be_reached_stops_with_the_reason(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SystemExit, match=f"The server at http://127.0.0.1:{port}/v1/audio/speech answered no warm-up "
                       "request: could not connect to the server"):  # fmt: skip
        bench.main(["sweep", "--url", f"http://127.0.0.1:{port}", *SWEEP, "--out", str(tmp_path)])
    assert not (tmp_path / "bench.json").exists()  # nothing measured, nothing written


def test_a_sweep_against_our_http_server(server: str, tmp_path: Path, capsys) -> None:
    bench.main(["sweep", "--url", server, *SWEEP, "--label", "ours", "--out", str(tmp_path)])
    assert re.search(r"c=1 .* C50/C100/C200 (\d+%|-)/(\d+%|-)/(\d+%|-) ", capsys.readouterr().out)
    levels = check_outputs(tmp_path, ["ours"])
    assert all(level["cpu_percent"] is None for level in levels)  # a server's processes are not ours to sample


def test_a_refused_request_is_an_error_of_the_level_not_a_crash(server: str) -> None:
    job = PromptSet.load().jobs(1)[0]
    good = job.http_body("voice_clone", max_new_tokens=3)
    bad = {**good, "language": "klingon"}
    (ok, refused), _ = asyncio.run(run_requests(speech_url(server), [good, bad], concurrency=2))
    assert ok.error is None and sum(ok.samples) == 2 * 1920 and len(ok.audio()) == 2 * 1920
    assert refused.error.startswith("HTTP 400") and "language" in refused.error
    assert refused.metrics(24000) is None


def test_a_subcommand_prints_its_figures_and_the_line_that_reproduces_them(capsys) -> None:
    figures = bench.main(["events", "--n", "2000"])
    assert {"span on", "span off", "drain+to_bytes per event"} <= set(figures)
    out = capsys.readouterr().out
    assert "on - off" in out and out.rstrip().endswith("reproduce: python -m profiling.bench events --n 2000")


def test_a_real_checkpoint_of_another_type_is_refused_before_anything_is_timed(checkpoints) -> None:
    with pytest.raises(SystemExit, match="'base' checkpoint; this benchmark times custom_voice"):
        bench.main(["model", "--checkpoint", str(checkpoints["base"])])


def test_the_ipc_bench_sees_each_code_chunk_cross_one_ring_on_the_direct_link_and_two_on_the_star_path(
    checkpoints,
) -> None:
    small = ["--requests", "2", "--frames", "6", "--concurrency", "2", "--repeats", "1"]
    paths = ["--paths", "mp-mp star", "mp-mp direct"]
    table = bench.main(["ipc", "--checkpoint", str(checkpoints["custom_voice"]), *small, *paths])
    star, direct = table["mp-mp star"], table["mp-mp direct"]
    assert star["errors"] == direct["errors"] == 0
    assert direct["chunk_crossings"] > 0 and star["chunk_crossings"] == 2 * direct["chunk_crossings"]
    assert direct["transfers"] < star["transfers"]


def test_the_model_bench_states_the_weight_streaming_and_gemm_bounds_beside_our_time(checkpoints, capsys) -> None:
    args = ["--frames", "3", "--repeats", "2", "--batch", "4", "--no-official"]
    figures = bench.main(["model", "--checkpoint", str(checkpoints["custom_voice"]), *args])
    out = capsys.readouterr().out
    assert "weight streaming (B=1 GEMV)" in out and "GEMM at B=4" in out and "of ours" in out
    stream, gemm = figures["weight streaming (B=1 GEMV)"], figures["GEMM at B=4"]
    assert 0 < stream["of_ours"] < 1  # our frame does every one of those GEMVs, and more
    assert 0 < gemm["of_ours"] and gemm["ms"] < stream["ms"]  # four rows share each weight's read
    assert "of_official" not in stream and "official" not in figures


def test_the_engine_bench_times_every_concurrency_on_one_engine_beside_its_ceiling(checkpoints) -> None:
    args = ["--concurrency", "1", "2", "--frames", "4", "--executors", "uni-uni", "--no-official"]
    table = bench.main(["engine", "--checkpoint", str(checkpoints["custom_voice"]), *args])
    assert list(table) == [1, 2]
    for rows in table.values():
        assert [row.name for row in rows] == ["engine uni-uni", "ceiling (stages, one thread)"]
        assert all(row.audio_per_s > 0 and 0 < row.ttfa_p50_s <= row.ttfa_p90_s for row in rows)


def test_a_released_size_the_release_lacks_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(
        SystemExit, match=r"no released 0.6B voice_design model; released: 0.6B-Base, .*1.7B-VoiceDesign"
    ):
        build_random(tmp_path, "voice_design", "0.6B")
