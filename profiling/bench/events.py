"""What recording costs: ns per span/instant/counter with the recorder on and off.

python -m profiling.bench events [--n 200000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from telemetry.events import DECODE_STEP, FIRST_AUDIO, IN_FLIGHT, TALKER, Recorder, now_ns


def _per_call_ns(fn: Callable[[Recorder, int], None], rec: Recorder, n: int) -> float:
    best = float("inf")
    for _ in range(3):  # best of three: the machine is shared
        t = time.perf_counter_ns()
        fn(rec, n)
        best = min(best, (time.perf_counter_ns() - t) / n)
        rec.drain()
    return best


def _empty(rec: Recorder, k: int) -> None:
    for _ in range(k):
        pass


def _span_args(rec: Recorder, k: int) -> None:
    for _ in range(k):
        with rec.span(DECODE_STEP, TALKER, batch_size=4):
            pass


def _span(rec: Recorder, k: int) -> None:
    for _ in range(k):
        with rec.span(DECODE_STEP, TALKER):
            pass


def _record_span(rec: Recorder, k: int) -> None:
    for _ in range(k):
        t = now_ns()
        rec.record_span(DECODE_STEP, TALKER, t, request="r1")


def _instant(rec: Recorder, k: int) -> None:
    for _ in range(k):
        rec.instant(FIRST_AUDIO, request="r1")


def _counter(rec: Recorder, k: int) -> None:
    for _ in range(k):
        rec.counter(IN_FLIGHT, 3)


CASES = {"span(args)": _span_args, "span": _span, "record_span": _record_span, "instant": _instant, "counter": _counter}


def bench(n: int) -> dict[str, float]:
    """ns per call, loop overhead subtracted; plus the cost per event of draining and serialising."""
    out: dict[str, float] = {}
    base = _per_call_ns(_empty, Recorder(), n)
    for enabled in (True, False):
        rec = Recorder(capacity=n, enabled=enabled)
        for name, fn in CASES.items():
            out[f"{name} {'on' if enabled else 'off'}"] = _per_call_ns(fn, rec, n) - base
    rec = Recorder(capacity=n)
    _span_args(rec, n)
    t = time.perf_counter_ns()
    rec.drain_batch().to_bytes()
    out["drain+to_bytes per event"] = (time.perf_counter_ns() - t) / n
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=200_000, help="calls per case")


def run(args: argparse.Namespace) -> dict[str, float]:
    out = bench(args.n)
    print(f"{'ns per call':<12} {'on':>8} {'off':>8} {'on - off':>9}")
    for name in CASES:
        on, off = out[f"{name} on"], out[f"{name} off"]
        print(f"{name:<12} {on:>8.0f} {off:>8.0f} {on - off:>9.0f}")
    print(f"drain + to_bytes: {out['drain+to_bytes per event']:.0f} ns per event")
    return out
