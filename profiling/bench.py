"""The benchmark runner: a concurrency sweep over the prompt set, against the embedded engine or a speech server.

    python -m profiling.bench --config configs/default.yaml --concurrency 1 2 4 --requests-per-level 8 --out results/
    python -m profiling.bench --url http://127.0.0.1:8000 --task custom_voice --voice vivian --concurrency 1 4 16
    python -m profiling.bench --config configs/tiny-mp-mp.yaml --concurrency 4 --recording both --repeat 3

At each concurrency c, `--requests-per-level` requests are sent with at most c in flight (after `--warmup` unmeasured
ones), and the reference benchmark's metrics are computed from the arrival times as the client sees them. Against a
server the client is `profiling.speech_client` (stream=true, response_format=pcm); `--extra-body` adds fields.
`--recording both` runs every level with the engine's event recording on and off, alternating, and prints the
throughput difference (recording is meant to stay on: that difference is what it costs).

Writes `bench.json` (every level with its per-request metrics), `bench.csv` (one row per level) and `bench.html`
(charts and a table; plotly.js is inlined, so the page opens offline).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from profiling.gpu_idle import IdleSplit
from profiling.metrics import RequestMetrics, RunMetrics, run_metrics
from profiling.prompts import PROMPT_SET, Job, PromptSet
from profiling.run import no_nan

CSV_METRICS = ("ttfa_s", "rtf", "e2e_s", "underrun_s")
IDLE_PARTS = ("gpu_busy", "gpu_waiting_for_host", "launch_latency", "host_waiting_for_kernel")  # IdleSplit's *_us
CSV_STATS = ("mean", "p50", "p90", "p95", "p99", "max")


@dataclass
class Level:
    """One concurrency level of one series (a config or server, with recording on or off)."""

    series: str
    concurrency: int
    metrics: RunMetrics
    per_request: list[RequestMetrics]
    errors: list[str] = field(default_factory=list)
    cpu_percent: float = float("nan")  # the engine's processes together (100 = one core), embedded runs only
    gpu_busy_percent: float = float("nan")  # NVML, mean over the GPUs; NaN without one
    gpu_idle_ms: dict[str, float] = field(default_factory=dict)  # `--capture` of a CUDA run: IDLE_PARTS, summed

    def row(self) -> dict[str, Any]:
        m = self.metrics
        row: dict[str, Any] = {
            "series": self.series,
            "concurrency": self.concurrency,
            "requests": m.requests,
            "errors": len(self.errors),
            "wall_s": m.wall_s,
            "audio_s": m.audio_s,
            "audio_s_per_s": m.audio_s_per_s,
            "continuity_ok_rate": m.continuity_ok_rate,
            "cpu_percent": self.cpu_percent,
            "gpu_busy_percent": self.gpu_busy_percent,
            **{f"{part}_ms": self.gpu_idle_ms.get(part, float("nan")) for part in IDLE_PARTS},
        }
        for name in CSV_METRICS:
            for stat, value in getattr(m, name).to_dict().items():
                row[f"{name}_{stat}"] = value
        return row


@dataclass
class Bench:
    levels: list[Level]
    meta: dict[str, Any]

    def series(self) -> dict[str, dict[int, RunMetrics]]:
        out: dict[str, dict[int, RunMetrics]] = {}
        for lv in self.levels:
            out.setdefault(lv.series, {})[lv.concurrency] = lv.metrics
        return out

    def recording_cost(self) -> dict[int, float]:
        """Concurrency -> how much lower throughput is with recording on than off, in % of the off figure."""
        s = self.series()
        on = next((v for k, v in s.items() if k.endswith("recording on")), {})
        off = next((v for k, v in s.items() if k.endswith("recording off")), {})
        both = [c for c in on if c in off and off[c].audio_s_per_s > 0]
        return {c: 100 * (off[c].audio_s_per_s - on[c].audio_s_per_s) / off[c].audio_s_per_s for c in both}

    def write(self, out: str | Path) -> dict[str, Path]:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "bench.json", "csv": out / "bench.csv", "html": out / "bench.html"}
        levels = [
            {**lv.row(), "per_request": [r.to_dict() for r in lv.per_request], "error_messages": lv.errors}
            for lv in self.levels
        ]
        doc = {"meta": self.meta, "recording_cost_percent": self.recording_cost(), "levels": levels}
        paths["json"].write_text(json.dumps(no_nan(doc), indent=1))
        rows = [lv.row() for lv in self.levels]
        with paths["csv"].open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["series"])
            writer.writeheader()
            writer.writerows(rows)
        paths["html"].write_text(self.html())
        return paths

    def html(self) -> str:
        """A self-contained page: the sweep's charts (plotly.js inlined) and the table of levels."""
        import html

        from profiling.figures import concurrency_figure

        fig = concurrency_figure(self.series(), title=self.meta.get("target", "Concurrency sweep"))
        chart = fig.to_html(full_html=False, include_plotlyjs=True)
        rows = [lv.row() for lv in self.levels]
        head = "".join(f"<th>{html.escape(k)}</th>" for k in (rows[0] if rows else {}))
        body = "".join(
            "<tr>"
            + "".join(
                f"<td>{v:.4g}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>" for v in r.values()
            )
            + "</tr>"
            for r in rows
        )
        cost = "".join(f"<li>c={c}: {p:+.1f}%</li>" for c, p in self.recording_cost().items())
        meta = html.escape(json.dumps(self.meta, indent=1, default=str))
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>Voxtrace benchmark</title><style>"
            "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>"
            f"<h1>Voxtrace benchmark</h1>{chart}<h2>Levels</h2><table><tr>{head}</tr>{body}</table>"
            + (f"<h2>Cost of event recording (throughput, on vs off)</h2><ul>{cost}</ul>" if cost else "")
            + f"<h2>Run</h2><pre>{meta}</pre></body></html>"
        )


Progress = Callable[[int], None]  # requests just completed


class Repeat(NamedTuple):
    """One run of a level: its requests' metrics, wall time, errors, and mean utilization (NaN when unsampled)."""

    per_request: list[RequestMetrics]
    wall_s: float
    errors: list[str]
    cpu_percent: float = float("nan")
    gpu_busy_percent: float = float("nan")
    gpu_idle: IdleSplit | None = None


def _level(series: str, c: int, repeats: Sequence[Repeat]) -> Level:
    """A level from one or more repeats: their requests pooled, their wall times added, utilization weighted by
    wall time."""
    wall = sum(r.wall_s for r in repeats)

    def weighted(values: list[float]) -> float:
        return sum(v * r.wall_s for v, r in zip(values, repeats, strict=True)) / wall if wall > 0 else float("nan")

    per_request = [m for r in repeats for m in r.per_request]
    splits = [r.gpu_idle for r in repeats if r.gpu_idle is not None]
    idle = {part: sum(getattr(x, f"{part}_us") for x in splits) / 1e3 for part in IDLE_PARTS} if splits else {}
    return Level(
        series,
        c,
        run_metrics(per_request, wall),
        per_request,
        [e for r in repeats for e in r.errors],
        cpu_percent=weighted([r.cpu_percent for r in repeats]),
        gpu_busy_percent=weighted([r.gpu_busy_percent for r in repeats]),
        gpu_idle_ms=idle,
    )


def sweep_engine(
    engine: Any,
    jobs: Callable[[int, int], list[Any]],
    concurrency: Sequence[int],
    n: int,
    *,
    warmup: int = 0,
    recording: Sequence[str] = ("on",),
    repeat: int = 1,
    label: str = "engine",
    progress: Progress | None = None,
    save_runs: Path | None = None,
    capture: bool = False,
) -> list[Level]:
    """`jobs(n, offset)` -> SpeechRequests. Each level runs `repeat` times per recording mode, modes alternating.
    `capture`: torch.profiler in every stage process for every run (traces under `save_runs`, which it needs), and
    from a CUDA run the GPU idle split per level; the capture slows the runs it measures."""
    from profiling.run import profile_run

    if capture and save_runs is None:
        raise ValueError("capture needs save_runs: the traces are written to each run's folder")

    if warmup:
        engine.set_recording(True)
        tick = (lambda done, total: progress(1)) if progress else None
        profile_run(engine, jobs(warmup, 0), concurrency=max(concurrency), progress=tick)
    levels = []
    for c in concurrency:
        results: dict[str, list[Repeat]] = {m: [] for m in recording}
        for rep in range(repeat):
            for mode in recording:
                engine.set_recording(mode == "on")
                run_dir = save_runs / f"c{c}-rec{mode}-{rep}" if save_runs is not None else None
                r = profile_run(
                    engine,
                    jobs(n, warmup),
                    concurrency=c,
                    run_dir=run_dir,
                    capture=capture,
                    progress=(lambda done, total: progress(1)) if progress else None,
                )
                utilization = (r.cpu_percent, r.gpu_busy_mean_percent, r.gpu_idle)
                results[mode].append(Repeat(r.per_request, r.wall_s, list(r.errors.values()), *utilization))
        captured = " · captured" if capture else ""
        levels += [_level(f"{label} · recording {m}{captured}", c, results[m]) for m in recording]
    engine.set_recording(True)
    return levels


def sweep_url(
    url: str,
    bodies: Callable[[int, int], list[dict[str, Any]]],
    concurrency: Sequence[int],
    n: int,
    *,
    warmup: int = 0,
    repeat: int = 1,
    sample_rate: int = 24000,
    label: str | None = None,
    progress: Progress | None = None,
) -> list[Level]:
    from profiling.speech_client import run_requests, speech_url

    url = speech_url(url)
    if warmup:
        tick = (lambda done, total: progress(1)) if progress else None
        asyncio.run(run_requests(url, bodies(warmup, 0), max(concurrency), progress=tick))
    levels = []
    for c in concurrency:
        results = []
        for _ in range(repeat):
            streamed, wall_s = asyncio.run(
                run_requests(url, bodies(n, warmup), c, progress=(lambda d, t: progress(1)) if progress else None)
            )
            metrics = [m for s in streamed if (m := s.metrics(sample_rate)) is not None]
            results.append(Repeat(metrics, wall_s, [f"{s.request}: {s.error}" for s in streamed if s.error]))
        levels.append(_level(label or url, c, results))
    return levels


def _progress_bar(total: int) -> tuple[Progress, Callable[[], None]]:
    """tqdm when installed, else a line on stderr rewritten in place."""
    try:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="req", desc="bench")
        return bar.update, bar.close
    except ImportError:
        done = [0]

        def update(k: int) -> None:
            done[0] += k
            print(f"\rbench: {done[0]}/{total} requests", end="", file=sys.stderr, flush=True)

        return update, lambda: print(file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> Bench:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--config", help="engine config YAML for the embedded engine (default: configs/default.yaml)")
    target.add_argument("--url", help="an OpenAI-compatible speech server (root, .../v1 or the endpoint)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--requests-per-level", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="unmeasured requests before the sweep")
    p.add_argument("--repeat", type=int, default=1, help="runs per level (pooled)")
    p.add_argument("--out", default="results", help="folder for bench.json, bench.csv and bench.html")
    p.add_argument(
        "--task",
        choices=["voice_clone", "custom_voice", "voice_design"],
        help="default: the embedded model's task; voice_clone against a URL",
    )
    p.add_argument("--voice", help="speaker for custom_voice (default: the model's first)")
    p.add_argument("--prompt-set", default=str(PROMPT_SET))
    p.add_argument("--prompts", nargs="+", help="prompt ids to use (default: all)")
    p.add_argument("--length", choices=["short", "long"], help="only short or only long prompts")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        help="frame cap per request (default: 40 on the tiny model, whose random weights never stop)",
    )
    p.add_argument("--x-vector-only", action="store_true", help="voice clone from the speaker embedding only")
    p.add_argument("--extra-body", type=json.loads, default={}, help="JSON merged into every HTTP request body")
    p.add_argument("--sample-rate", type=int, default=24000, help="the server's PCM rate")
    p.add_argument("--recording", choices=["on", "off", "both"], default="on", help="engine event recording")
    p.add_argument("--save-runs", action="store_true", help="write each embedded run's folder under <out>/runs/")
    p.add_argument(
        "--capture",
        action="store_true",
        help="torch.profiler in every run (implies --save-runs; slows the runs); on CUDA: the GPU idle split per level",
    )
    p.add_argument("--label", help="series name in the charts")
    args = p.parse_args(argv)

    prompts = PromptSet.load(args.prompt_set)
    if args.prompts or args.length:
        prompts = prompts.select(args.prompts, args.length)
    modes = ["on", "off"] if args.recording == "both" else [args.recording]
    total = args.warmup + args.requests_per_level * len(args.concurrency) * args.repeat * len(modes)
    meta: dict[str, Any] = {"args": vars(args), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    update, close = _progress_bar(total)
    try:
        if args.url:
            task = args.task or "voice_clone"
            meta.update(target=args.url, task=task)

            def bodies(n: int, offset: int) -> list[dict[str, Any]]:
                return [
                    j.http_body(
                        task,
                        voice=args.voice,
                        max_new_tokens=args.max_new_tokens,
                        x_vector_only=args.x_vector_only,
                        extra=args.extra_body,
                    )
                    for j in prompts.jobs(n, offset)
                ]

            levels = sweep_url(
                args.url,
                bodies,
                args.concurrency,
                args.requests_per_level,
                warmup=args.warmup,
                repeat=args.repeat,
                sample_rate=args.sample_rate,
                label=args.label,
                progress=update,
            )
        else:
            levels = _embedded(args, prompts, modes, meta, update)
    finally:
        close()
    bench = Bench(levels, meta)
    paths = bench.write(args.out)
    _report(bench, paths)
    return bench


def _embedded(args: argparse.Namespace, prompts: PromptSet, modes: list[str], meta: dict, update: Progress) -> list:
    from engine import Engine, EngineConfig

    config_path = args.config or "configs/default.yaml"
    config = EngineConfig.from_yaml(config_path)
    max_new = args.max_new_tokens or (40 if config.model is None else None)
    with Engine(config) as engine:
        task = args.task or engine.model.task
        speaker = args.voice or (engine.model.speakers[0] if engine.model.speakers else None)
        meta.update(target=config_path, task=task, max_new_tokens=max_new, worker_pids=engine.worker_pids())
        counter = [0]

        def jobs(n: int, offset: int) -> list[Any]:
            out = []
            for job in prompts.jobs(n, offset):
                counter[0] += 1
                out.append(_request(job, task, speaker, max_new, args.x_vector_only, f"b{counter[0]}"))
            return out

        save = Path(args.out) / "runs" if args.save_runs or args.capture else None
        return sweep_engine(
            engine,
            jobs,
            args.concurrency,
            args.requests_per_level,
            warmup=args.warmup,
            recording=modes,
            repeat=args.repeat,
            label=args.label or Path(config_path).stem,
            progress=update,
            save_runs=save,
            capture=args.capture,
        )


def _request(job: Job, task: str, speaker: str | None, max_new: int | None, xvec: bool, rid: str) -> Any:
    return job.request(task, speaker=speaker, max_new_tokens=max_new, x_vector_only=xvec, request_id=rid)


def _report(bench: Bench, paths: dict[str, Path]) -> None:
    for lv in bench.levels:
        m = lv.metrics
        print(
            f"{lv.series:40} c={lv.concurrency:<3} audio s/s {m.audio_s_per_s:7.3f}  ttfa p50 {m.ttfa_s.p50:.3f}s"
            f"  rtf p50 {m.rtf.p50:.3f}  errors {len(lv.errors)}"
            + (f"  cpu {lv.cpu_percent:.0f}%" if lv.cpu_percent == lv.cpu_percent else "")
            + (f"  gpu busy {lv.gpu_busy_percent:.0f}%" if lv.gpu_busy_percent == lv.gpu_busy_percent else "")
            + "".join(f"  {part} {ms:.1f} ms" for part, ms in lv.gpu_idle_ms.items())
        )
    for c, pct in bench.recording_cost().items():
        print(f"event recording at c={c}: throughput {-pct:+.1f}% with recording on than off")
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
