"""Start-up at real size: how long an engine takes to load, and the memory its processes hold, per executor pair.

    python -m profiling.bench memory --checkpoint /tmp/ckpt-0.6b [--pairs uni-uni mp-mp]
    python -m profiling.bench memory --size 0.6B    # a random checkpoint at a released size, built for the run

Each engine is built as `app.py --model CHECKPOINT` builds it (the talker's shape as the engine config leaves it) in a
fresh process of its own, one at a time: the time `Engine(config)` takes; the peak RSS of the engine's process
(getrusage, exact) and of each worker and of the whole tree (sampled every 20 ms); the tree's RSS once idle. Building
a 1.7B checkpoint once and passing it as `--checkpoint` lets two checkouts (before and after a change) be measured on
the same weights; this file runs from a checkout that lacks it (`python -m profiling.bench.memory`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import threading
import time

import psutil

from engine.request import Task
from profiling.bench.checkpoint import add_checkpoint_arguments, bench_checkpoint

PAIRS = ("uni-uni", "mp-mp", "uni-mp", "mp-uni")
GiB = 2**30


class TreeSampler:
    """The RSS of this process and its descendants, sampled on a thread: the peak per process and of the sum."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.every_s, self.me = every_s, psutil.Process()
        self.peak_total = 0
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> dict[int, int]:
        rss = {}
        for proc in [self.me, *self.me.children(recursive=True)]:
            try:
                rss[proc.pid] = proc.memory_info().rss
            except psutil.Error:  # ended between the listing and the read
                pass
        return rss

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            rss = self.now()
            self.peak_total = max(self.peak_total, sum(rss.values()))
            for pid, n in rss.items():
                self.peak[pid] = max(self.peak.get(pid, 0), n)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def measure(checkpoint: str, pair: str) -> dict:
    """One engine's start-up in this process (the child's side)."""
    from engine import Engine, EngineConfig

    talker, code2wav = pair.split("-")
    config = EngineConfig(model=checkpoint)
    config = dataclasses.replace(
        config,
        talker=dataclasses.replace(config.talker, executor=talker),
        code2wav=dataclasses.replace(config.code2wav, executor=code2wav),
    )
    sampler = TreeSampler()
    start = time.perf_counter()
    engine = Engine(config)
    load_s = time.perf_counter() - start
    time.sleep(2.0)  # settled: what the idle server holds
    idle = sampler.now()
    workers = dict(engine.probe.worker_pids())
    plan = getattr(engine, "memory", None)
    engine.close()
    sampler.stop()
    me = sampler.me.pid
    return {
        "pair": pair,
        "load_s": load_s,
        "talker_shape": [engine.config.talker.max_num_seqs, engine.config.talker.max_model_len],
        "engine_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB,
        "worker_peak_gib": {kind: sampler.peak.get(pid, 0) / GiB for kind, pid in workers.items()},
        "tree_peak_gib": sampler.peak_total / GiB,
        "tree_idle_gib": sum(idle.values()) / GiB,
        "engine_idle_gib": idle.get(me, 0) / GiB,
        "plan": None if plan is None else plan.describe(),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(p)
    p.add_argument("--pairs", nargs="+", choices=PAIRS, default=["uni-uni", "mp-mp"], metavar="PAIR",
                   help=f"talker-code2wav executors, each in a process of its own: {', '.join(PAIRS)}")  # fmt: skip


def run(args: argparse.Namespace) -> list[dict]:
    results = []
    with bench_checkpoint(args, Task.VOICE_CLONE) as checkpoint:
        for pair in args.pairs:
            child = [sys.executable, "-m", "profiling.bench.memory", "--child", str(checkpoint.path), pair]
            done = subprocess.run(child, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{pair}: the engine did not start:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(result)
            if result["plan"]:
                print(result["plan"])
            workers = ", ".join(f"{k} {v:.2f}" for k, v in result["worker_peak_gib"].items()) or "none"
            seqs, length = result["talker_shape"]
            print(
                f"{checkpoint.name} {pair}: talker {seqs} x {length}, load {result['load_s']:.1f} s, peak RSS: "
                f"engine process {result['engine_peak_gib']:.2f} GiB, workers {workers}, all "
                f"{result['tree_peak_gib']:.2f} GiB; idle: all {result['tree_idle_gib']:.2f} GiB, engine process "
                f"{result['engine_idle_gib']:.2f} GiB",
                flush=True,
            )
    return results


def main() -> None:
    """Run without the `profiling.bench` command (a checkout that lacks this subcommand), or as the child."""
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(measure(sys.argv[2], sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
