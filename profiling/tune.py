"""Tune: find the engine config that serves a measured workload best, and say why.

    python -m profiling.tune configs/workloads/prompt-set-c8.yaml --budget 10m --out results/tune-c8
    python -m profiling.tune configs/workloads/prompt-set-c1.yaml --config configs/default.yaml --budget 90s
    python -m profiling.tune configs/workloads/prompt-set-c8.yaml --url http://127.0.0.1:8000 --budget 5m

Candidates are points of the knob table (`profiling.space.KNOBS`, or the workload's `space:`): the `--config` they
start from, each one-knob change of it, then random combinations, up to `--max-candidates`. The search
(`profiling.search`) runs them in successive halving within `--budget`, repeating runs where the noise is larger than
the difference, and marks every candidate that breaks an SLO; the default runs again every `--drift-every` candidates
of a rung, and each run is read against the default near it (a shared machine drifts). The recommendation is then
run again against the default, alternately, and the gain (or none) is reported. Progress is printed as runs finish.

Writes recommended.yaml (for `app.py --config`; each changed knob's evidence in its header), tune.json, tune.csv
and tune.html. Against `--url` the server's engine is not ours to change: only the client's concurrency is searched
(the most audio within the SLOs says how much concurrency the server takes).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from engine.config import EngineConfig
from profiling.evidence import explain
from profiling.search import Abort, Candidate, Evaluator, Measurement, Search, make_candidates, verify
from profiling.space import CLIENT_KNOBS, KNOBS, apply, candidate_points, config_yaml, space
from profiling.tune_report import TuneReport
from profiling.workload import Workload

OnMeasure = Callable[[Candidate, Measurement], None]


def parse_budget(text: str) -> float:
    """Seconds from "600", "90s", "10m" or "1.5h"."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise ValueError(f"a budget is a duration such as 90s, 10m or 1h, got {text!r}")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def tune(
    workload: Workload,
    evaluator: Evaluator,
    points: list[dict[str, Any]],
    budget_s: float,
    *,
    base: EngineConfig | None = None,
    min_requests: int | None = None,
    max_requests: int | None = None,
    verify_rounds: int = 2,
    drift_every: int = 4,
    on_measure: OnMeasure | None = None,
    meta: dict[str, Any] | None = None,
) -> TuneReport:
    """Search `points` (the first is the default), verify the recommendation against it, explain each changed
    knob. `base`: the engine config the points apply to (None against a server: no config to write)."""
    n_min = min_requests or workload.default_requests()
    search = Search(
        make_candidates(points),
        evaluator,
        workload.objective,
        workload.slo,
        budget_s=budget_s,
        min_requests=n_min,
        max_requests=max_requests or 4 * n_min,
        reserve_runs=2 * verify_rounds,
        drift_every=drift_every,
        on_measure=on_measure,
    )
    result = search.run()
    rec = result.recommended
    check, start = None, time.monotonic()
    if rec is not None and rec is not result.default and verify_rounds:
        check = verify(evaluator, workload.objective, result.default.values, rec.values, result.compared_at,
                       verify_rounds)  # fmt: skip
    verify_s = time.monotonic() - start
    knobs = {k.key: k.signals for k in (*KNOBS, *CLIENT_KNOBS)}
    evidence = explain(result, knobs, check)
    report = TuneReport(workload.name, result, check, evidence, None, dict(meta or {}), verify_s)
    final = report.recommended
    if rec is not None and final is not rec:
        rec.notes.append("not confirmed by the verification")
        result.default.notes.append("recommended: the search's pick was not confirmed")
    if base is not None and final is not None:
        header = [f"Voxtrace tune: the recommended config for the workload {workload.name!r}.", report.verdict(), ""]
        header += [e.sentence for e in evidence]
        report.config_yaml = config_yaml(apply(base, final.values), "\n".join(textwrap.fill(h, 116) for h in header))
    return report


def progress_line(t0: float) -> OnMeasure:
    def show(c: Candidate, m: Measurement) -> None:
        err = f"  {m.errors} errors ({m.error})" if m.errors else ""
        print(
            f"[{time.monotonic() - t0:6.0f} s] {c.id} {c.label[:60]:60} n={m.n_requests:<4} audio-s/s "
            f"{m.audio_s_per_s:7.3f}  TTFA p99 {1e3 * m.ttfa_p99_s:6.0f} ms  underrun p99 "
            f"{1e3 * m.underrun_p99_s:5.0f} ms  RTF p99 {m.rtf_p99:.2f}{err}",
            flush=True,
        )

    return show


def main(argv: Sequence[str] | None = None) -> TuneReport:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", help="workload YAML (see configs/workloads/)")
    p.add_argument("--budget", default="10m", help="time for the search and the verification: 90s, 10m, 1h")
    p.add_argument("--out", default="results/tune", help="folder for recommended.yaml, tune.json/csv/html")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--config", default="configs/default.yaml", help="the engine config the search starts from")
    target.add_argument("--url", help="an OpenAI-compatible speech server: only the client's concurrency is searched")
    p.add_argument("--voice", help="--url with custom_voice: the speaker")
    p.add_argument("--max-candidates", type=int, default=16)
    p.add_argument("--min-requests", type=int, help="requests in the shortest runs (default: from the workload)")
    p.add_argument("--max-requests", type=int, help="requests in the longest runs (default: 4 x the shortest)")
    p.add_argument("--verify-rounds", type=int, default=2, help="alternating runs of default and recommendation")
    p.add_argument("--drift-every", type=int, default=4, help="candidates between re-runs of the default in a rung "
                   "(0: no drift correction)")  # fmt: skip
    p.add_argument("--warmup", type=int, help="requests that warm each new engine (default: the concurrency, at least "
                   "2 and one per voice)")  # fmt: skip
    p.add_argument("--keep", type=int, default=2, help="engines kept up between runs (memory: one per candidate)")
    p.add_argument("--save-runs", action="store_true", help="every run's folder (trace, metrics) under <out>/runs/")
    p.add_argument("--seed", type=int, default=0, help="which random combinations fill the candidates")
    args = p.parse_args(argv)

    workload = Workload.from_yaml(args.workload)
    budget_s = parse_budget(args.budget)
    meta: dict[str, Any] = {"args": vars(args), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    on_measure = progress_line(time.monotonic())
    if args.url:
        from profiling.evaluate import UrlEvaluator

        print("against a server only the client's concurrency is searched: its engine config is not ours to change")
        knobs = space(CLIENT_KNOBS, workload.space)
        base_point = SimpleNamespace(concurrency=workload.arrival.concurrency)
        points = candidate_points(base_point, knobs, args.max_candidates, args.seed)
        evaluator = UrlEvaluator(args.url, workload, voice=args.voice)
        report = tune(workload, evaluator, points, budget_s, min_requests=args.min_requests,
                      max_requests=args.max_requests, verify_rounds=args.verify_rounds, on_measure=on_measure,
                      meta={**meta, "target": args.url})  # fmt: skip
    else:
        from profiling.evaluate import EngineEvaluator, KeptEngines

        config = EngineConfig.from_yaml(args.config)
        if config.model is None and workload.tiny_task:
            config = dataclasses.replace(config, tiny_task=workload.tiny_task)
        knobs = space(KNOBS, workload.space)
        points = candidate_points(config, knobs, args.max_candidates, args.seed)
        for point in points:
            apply(config, point)  # a knob value the config refuses fails here, naming the knob
        save = Path(args.out) / "runs" if args.save_runs else None
        engines = KeptEngines(args.keep)
        with EngineEvaluator(config, workload, engines=engines, warmup=args.warmup, save_runs=save) as evaluator:
            report = tune(workload, evaluator, points, budget_s, base=config, min_requests=args.min_requests,
                          max_requests=args.max_requests, verify_rounds=args.verify_rounds,
                          drift_every=args.drift_every, on_measure=on_measure,
                          meta={**meta, "target": args.config})  # fmt: skip
    paths = report.write(args.out)
    print(report.verdict())
    for e in report.evidence:
        print(" -", e.sentence)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return report


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError, Abort) as exc:  # a bad workload, config or budget, or one the model cannot serve
        sys.exit(f"tune: {exc}")
