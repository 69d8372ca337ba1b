"""Concurrency sweeps and their results: each level's requests sent with at most c in flight, against the embedded
engine (`sweep_engine`, through `profiling.run.profile_run`) or an OpenAI-compatible speech server (`sweep_url`), and
the `Bench` that writes them as JSON, CSV and a self-contained HTML page. `python -m profiling.bench sweep` is the
command.
"""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from profiling.gpu_idle import IdleSplit
from profiling.metrics import RequestMetrics, RunMetrics, run_metrics
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
            **{f"continuity_{k}": v for k, v in m.continuity.to_dict().items() if k != "requests"},
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


def level_of(series: str, c: int, repeats: Sequence[Repeat]) -> Level:
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
        engine.probe.set_recording(True)
        tick = (lambda done, total: progress(1)) if progress else None
        profile_run(engine, jobs(warmup, 0), concurrency=max(concurrency), progress=tick)
    levels = []
    for c in concurrency:
        results: dict[str, list[Repeat]] = {m: [] for m in recording}
        for rep in range(repeat):
            for mode in recording:
                engine.probe.set_recording(mode == "on")
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
        levels += [level_of(f"{label} · recording {m}{captured}", c, results[m]) for m in recording]
    engine.probe.set_recording(True)
    return levels


class ServerUnusable(Exception):
    """A server that answered none of the warm-up requests (unreachable, or refusing them): a sweep would measure
    only errors. The message says what failed, in words a page can show."""


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
    """`bodies(n, offset)` -> request bodies, sent to the server's speech endpoint with at most c in flight per level.
    The warm-up requests also check the server: when none is answered, `ServerUnusable` stops the sweep before it
    measures anything."""
    from profiling.speech_client import run_requests, speech_url

    url = speech_url(url)
    if warmup:
        tick = (lambda done, total: progress(1)) if progress else None
        streamed, _ = asyncio.run(run_requests(url, bodies(warmup, 0), max(concurrency), progress=tick))
        if all(s.error for s in streamed):
            raise ServerUnusable(f"The server at {url} answered no warm-up request: {streamed[0].error}")
    levels = []
    for c in concurrency:
        results = []
        for _ in range(repeat):
            streamed, wall_s = asyncio.run(
                run_requests(url, bodies(n, warmup), c, progress=(lambda d, t: progress(1)) if progress else None)
            )
            metrics = [m for s in streamed if (m := s.metrics(sample_rate)) is not None]
            results.append(Repeat(metrics, wall_s, [f"{s.request}: {s.error}" for s in streamed if s.error]))
        levels.append(level_of(label or url, c, results))
    return levels
