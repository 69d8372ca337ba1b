"""A concurrency sweep over the prompt set, against the embedded engine or a speech server.

    python -m profiling.bench sweep --config configs/default.yaml --concurrency 1 2 4 --out results/
    python -m profiling.bench sweep --url http://127.0.0.1:8000 --task custom_voice --voice vivian --concurrency 1 4 16
    python -m profiling.bench sweep --config configs/tiny-mp-mp.yaml --concurrency 4 --recording both --repeat 3

At each concurrency c, `--requests-per-level` requests are sent with at most c in flight (after `--warmup` unmeasured
ones), and the reference benchmark's metrics are computed from the arrival times as the client sees them. Against a
server the client is `profiling.speech_client` (stream=true, response_format=pcm); `--extra-body` adds fields.
`--recording both` runs every level with the engine's event recording on and off, alternating, and prints the
throughput difference (recording is meant to stay on: that difference is what it costs).

Writes `bench.json` (every level with its per-request metrics), `bench.csv` (one row per level) and `bench.html`
(charts and a table; plotly.js is inlined, so the page opens offline). The sweeps themselves are `profiling.sweep`'s,
which the app's Benchmark view runs too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.request import Task
from profiling.bench.prompt_set import PROMPT_SET, Job, PromptSet
from profiling.metrics import Continuity
from profiling.sweep import Bench, Progress, ServerUnusable, sweep_engine, sweep_url


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


def add_arguments(p: argparse.ArgumentParser) -> None:
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
        choices=[task.value for task in Task],
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


def run(args: argparse.Namespace) -> Bench:
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

            try:
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
            except ServerUnusable as exc:  # the reason, not a traceback
                raise SystemExit(f"sweep: {exc}") from None
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
        task = args.task or engine.info.task
        speaker = args.voice or (engine.info.speakers[0] if engine.info.speakers else None)
        meta.update(target=config_path, task=task, max_new_tokens=max_new, worker_pids=engine.probe.worker_pids())
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


def _shares(c: Continuity) -> str:
    """C50/C100/C200 as percentages, "-" when no request came in more than one chunk."""
    return "/".join("-" if v != v else f"{100 * v:.0f}%" for v in (c.c50, c.c100, c.c200))


def _report(bench: Bench, paths: dict[str, Path]) -> None:
    for lv in bench.levels:
        m = lv.metrics
        print(
            f"{lv.series:40} c={lv.concurrency:<3} audio s/s {m.audio_s_per_s:7.3f}  ttfa p50 {m.ttfa_s.p50:.3f}s"
            f"  rtf p50 {m.rtf.p50:.3f}  C50/C100/C200 {_shares(m.continuity)}  errors {len(lv.errors)}"
            + (f"  cpu {lv.cpu_percent:.0f}%" if lv.cpu_percent == lv.cpu_percent else "")
            + (f"  gpu busy {lv.gpu_busy_percent:.0f}%" if lv.gpu_busy_percent == lv.gpu_busy_percent else "")
            + "".join(f"  {part} {ms:.1f} ms" for part, ms in lv.gpu_idle_ms.items())
        )
    for c, pct in bench.recording_cost().items():
        print(f"event recording at c={c}: throughput {-pct:+.1f}% with recording on than off")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
