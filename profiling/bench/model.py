"""Our model against the official qwen-tts on the same checkpoint: time per generated frame, and the ratio.

    python -m profiling.bench model --size tiny --frames 40 --repeats 3
    python -m profiling.bench model --size mid --frames 25 --repeats 2

Both sides run the same greedy custom-voice request in one process each, with the same torch thread count, a
warm-up run first, and the median of the timed runs. Random weights never sample EOS, so every run generates exactly
`--frames` frames (80 ms of audio each). "generate" is the talker + code predictor loop; "decode" is Code2Wav.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from engine.model.qwen3_tts import Qwen3TTS, SynthesisInput
from engine.model.sampling import SamplingParams
from engine.request import Task
from profiling.bench.checkpoint import add_checkpoint_arguments, bench_checkpoint
from reference.client import run_official

TEXT = "Voxtrace measures where every millisecond of a synthesised sentence goes."


def time_ours(model: Qwen3TTS, request: SynthesisInput, params: SamplingParams, repeats: int) -> tuple[float, float]:
    """Median seconds of (generate, decode) over `repeats` runs after one warm-up."""
    generate, decode = [], []
    for i in range(repeats + 1):
        start = time.perf_counter()
        codes = model.generate_codes(request, params)
        mid = time.perf_counter()
        model.decode(codes)
        end = time.perf_counter()
        if i:
            generate.append(mid - start)
            decode.append(end - mid)
    return statistics.median(generate), statistics.median(decode)


def time_official(checkpoint: Path, frames: int, repeats: int, threads: int) -> tuple[float, float]:
    case = {
        "task": "custom_voice",
        "text": TEXT,
        "speaker": "vivian",
        "language": "English",
        "gen": {"do_sample": False, "subtalker_dosample": False, "max_new_tokens": frames + 1},
    }
    cases = [{**case, "name": f"run{i}"} for i in range(repeats + 1)]
    results = run_official([{"checkpoint": str(checkpoint), "cases": cases}], threads=threads)
    timed = [results[f"{checkpoint.name}/run{i}"] for i in range(1, repeats + 1)]
    generate = statistics.median(r["generate_seconds"] for r in timed)
    return generate, statistics.median(r["seconds"] - r["generate_seconds"] for r in timed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(parser)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on each side")


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    with bench_checkpoint(args, Task.CUSTOM_VOICE) as checkpoint:
        model = Qwen3TTS.from_pretrained(checkpoint.path)
        request = SynthesisInput(text=TEXT, speaker="vivian", language="English")
        params = SamplingParams(do_sample=False, subtalker_dosample=False, max_new_tokens=args.frames + 1)
        print("timing ours ...", file=sys.stderr)
        ours = time_ours(model, request, params, args.repeats)
        print("timing the official qwen-tts 0.1.1 ...", file=sys.stderr)
        official = time_official(checkpoint.path, args.frames, args.repeats, args.threads)

    ms = lambda seconds: 1000 * seconds / args.frames  # noqa: E731
    print(
        f"\n{checkpoint.name} model, {args.frames} frames, greedy custom voice, {args.threads} torch thread(s), "
        f"median of {args.repeats}"
    )
    print(f"{'':>12} {'ours':>10} {'official':>10} {'speed-up':>9}")
    for name, a, b in (("generate", ours[0], official[0]), ("decode", ours[1], official[1])):
        print(f"{name + ' ms/fr':>12} {ms(a):>10.2f} {ms(b):>10.2f} {b / a:>8.2f}x")
