"""What moving data between the stages costs, per path, measured by the profiler in one run.

    python -m profiling.bench ipc [--size tiny|mid] [--requests 32] [--frames 96] [--concurrency 8] [--repeats 3]

The same seeded custom-voice requests run on engines kept side by side, in turns (so drift hits each alike):
`uni-uni` (messages passed in process: the bound, nothing serialised or copied), `mp-mp` over the star path (each
code chunk crosses talker -> engine -> code2wav: `direct_link: false`), `mp-mp` over the direct link (talker ->
code2wav), `mp-uni` (the talker's chunks cross once, into the engine's process), and, when asked (`--paths`), the
same crossings by Ray actors: `ray-ray` (the star path) and `ray-uni`, on a local Ray cluster the engine starts (or
`RAY_ADDRESS`'s). From each run's merged timeline: transfers (HANDOFF spans) and code-chunk hops, bytes moved, the
time spent serialising, copying and waiting for ring space, the handoff latency, and what the caller got (audio s/s,
first audio).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

from engine import Engine, EngineConfig, SpeechRequest
from engine.config import RayPlacement, StageConfig
from engine.request import Task
from profiling.bench.checkpoint import GREEDY, add_checkpoint_arguments, bench_checkpoint
from profiling.metrics import ipc_overhead
from profiling.run import RunResult, profile_run
from telemetry.events import HANDOFF, SPAN, TRANSPORT

PATHS = {  # name -> (talker executor, code2wav executor, direct link)
    "uni-uni": ("uni", "uni", True),
    "mp-mp star": ("mp", "mp", False),
    "mp-mp direct": ("mp", "mp", True),
    "mp-uni": ("mp", "uni", True),
    "ray-ray": ("ray", "ray", True),  # Ray actors: every chunk through the engine (the star path)
    "ray-uni": ("ray", "uni", True),  # beside mp-uni: one crossing per chunk, by Ray
}


ANY_CPU = RayPlacement(num_cpus=0)  # the engines side by side share this machine's cores whatever Ray counts
DEFAULT_PATHS = [name for name in PATHS if not name.startswith("ray")]  # Ray only when asked: it starts a cluster


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(p)
    p.add_argument("--requests", type=int, default=32, help="requests per run")
    p.add_argument("--frames", type=int, default=96, help="frames per request")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="runs per path, taken in turns")
    p.add_argument("--paths", nargs="+", choices=list(PATHS), default=DEFAULT_PATHS, metavar="PATH",
                   help=f"which of {', '.join(map(repr, PATHS))}")  # fmt: skip


def figures(result: RunResult) -> dict[str, float]:
    """The transport's cost in one run, from its timeline."""
    ipc = ipc_overhead(result.timeline)
    handoffs = result.timeline.select(kind=SPAN, name=HANDOFF, track=TRANSPORT)
    crossings = sum(1 for e in handoffs if (e.args or {}).get("message") == "CodeChunk" and e.args.get("bytes"))
    return {
        "transfers": ipc.transfers,
        "chunk_crossings": crossings,  # a code chunk through a ring (an in-process hand-off moves no bytes)
        "mb": ipc.bytes / 2**20,
        "serialize_ms": ipc.serialize_s * 1e3,
        "copy_ms": ipc.copy_s * 1e3,
        "wait_ms": ipc.wait_s * 1e3,
        "handoff_p50_us": ipc.handoff_s.p50 * 1e6,
        # what one transfer costs its two ends (serialise, copy, wait), beside its latency (handoff)
        "cost_per_transfer_us": (ipc.serialize_s + ipc.copy_s + ipc.wait_s) / max(ipc.transfers, 1) * 1e6,
        "audio_s_per_s": result.metrics.audio_s_per_s,
        "ttfa_p50_ms": result.metrics.ttfa_s.p50 * 1e3,
        "errors": len(result.errors),
    }


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    with bench_checkpoint(args, Task.CUSTOM_VOICE) as checkpoint:
        engines: dict[str, Engine] = {}
        try:
            for name in args.paths:
                talker, code2wav, direct = PATHS[name]
                config = EngineConfig(
                    model=str(checkpoint.path),
                    talker=StageConfig(executor=talker, max_num_seqs=args.concurrency, ray=ANY_CPU),
                    code2wav=StageConfig(executor=code2wav, max_num_seqs=4, ray=ANY_CPU),
                    direct_link=direct,
                )
                engines[name] = Engine(config)
            speaker = next(iter(engines.values())).info.speakers[0]

            def requests(tag: str) -> list[SpeechRequest]:
                params = dataclasses.replace(GREEDY, max_new_tokens=args.frames, min_new_tokens=args.frames)
                return [
                    SpeechRequest(
                        f"Measuring the transport, request {i}.",
                        speaker=speaker,
                        sampling=params,
                        request_id=f"{tag}-{i}",
                    )  # fmt: skip
                    for i in range(args.requests)
                ]

            runs: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
            for name, engine in engines.items():  # warm-up, unmeasured
                profile_run(engine, requests(f"warm-{name}"), concurrency=args.concurrency)
            for rep in range(args.repeats):
                for name, engine in engines.items():
                    result = profile_run(engine, requests(f"r{rep}-{name}"), concurrency=args.concurrency)
                    runs[name].append(figures(result))
        finally:
            for engine in engines.values():
                engine.close()
    table = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    _print(table, checkpoint.name, args)
    return table


def _print(table: dict[str, dict[str, float]], checkpoint: str, args: argparse.Namespace) -> None:
    print(f"\n{checkpoint} checkpoint, {args.requests} requests x {args.frames} frames at c={args.concurrency}, "
          f"median of {args.repeats} runs per path")  # fmt: skip
    head = ("path", "transfers", "chunks through a ring", "MB", "serialize ms", "copy ms", "wait ms", "handoff p50 µs",
            "cost/transfer µs", "audio s/s", "TTFA p50 ms", "errors")  # fmt: skip
    print(" | ".join(head))
    for name, f in table.items():
        cells = (f["transfers"], f["chunk_crossings"], f["mb"], f["serialize_ms"], f["copy_ms"], f["wait_ms"],
                 f["handoff_p50_us"], f["cost_per_transfer_us"], f["audio_s_per_s"], f["ttfa_p50_ms"],
                 f["errors"])  # fmt: skip
        print(" | ".join([name, *(f"{c:.1f}" if isinstance(c, float) else str(c) for c in cells)]))
    cost = {name: f["serialize_ms"] + f["copy_ms"] for name, f in table.items()}
    if {"mp-mp star", "mp-mp direct"} <= set(table):
        star, direct = table["mp-mp star"], table["mp-mp direct"]
        print(f"mp-mp direct / star: transfers {direct['transfers'] / star['transfers']:.2f}x, "
              f"serialize+copy {cost['mp-mp direct'] / cost['mp-mp star']:.2f}x, "
              f"audio s/s {direct['audio_s_per_s'] / star['audio_s_per_s']:.2f}x")  # fmt: skip
    if "uni-uni" in table:
        print(f"bound (uni-uni, nothing crosses a process): serialize+copy {cost['uni-uni']:.1f} ms")
