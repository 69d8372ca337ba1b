"""Our model against the official qwen-tts on the same checkpoint: time per generated frame, the ratio, and the limits.

    python -m profiling.bench model --size tiny --frames 40 --repeats 3
    python -m profiling.bench model --size mid --frames 25 --repeats 2 --batch 16

Both sides run the same greedy custom-voice request in one process each, with the same torch thread count, a
warm-up run first, and the median of the timed runs. Random weights never sample EOS, so every run generates exactly
`--frames` frames (80 ms of audio each). "generate" is the talker + code predictor loop; "decode" is Code2Wav.

The limits of "generate", measured in the same run on the loaded weights (same device, dtype and threads):
- the weight-streaming bound, at B=1: every weight matrix a frame reads, as many times as it reads it (the talker's
  layers and codec head once; the code predictor's input projection and layers once per predictor step, 15 times;
  one predictor head per step), each applied to one row as a GEMV (`F.linear`). A GEMV rather than a plain read of
  the same bytes, because it is the op the frame runs, at its shapes, one kernel per weight as ours: it times the
  bytes streamed plus the one dispatch per weight that no per-op loop avoids, and nothing else (no attention, norms,
  sampling or host logic). A raw read would time bandwidth alone, a floor no loop of per-weight ops reaches on a small
  model, whose weights sit in cache and whose time is dispatch; where weights do stream, the GEMV's time is the read's.
- the GEMM bound at batch B (`--batch`): the same pass on B rows at once, its time divided by B: the floor per frame
  of B requests stepped together, as the engine batches them (what batching could buy over this B=1 loop).
Each bound is the fastest of 10 passes, printed beside the time per frame of ours and of the official package as
bound / time: the fraction of that frame the bound accounts for (1.0 would be at the limit).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.model.qwen3_tts import Qwen3TTS, SynthesisInput
from engine.model.sampling import SamplingParams
from engine.model.talker import Talker
from engine.request import Task
from profiling.bench.checkpoint import add_checkpoint_arguments, bench_checkpoint
from reference.client import run_official

TEXT = "Voxtrace measures where every millisecond of a synthesised sentence goes."
BOUND_PASSES = 10  # a pass is one frame's weight traffic: cheap beside the timed runs


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


def linear_weights(module: nn.Module) -> list[Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, nn.Linear)]


def frame_weights(talker: Talker) -> list[Tensor]:
    """Every weight matrix one decode step reads for one frame, once per read. Norm weights, biases and embedding rows
    are left out: vectors, well under a percent of the bytes."""
    predictor = talker.code_predictor
    step = linear_weights(predictor.small_to_mtp_projection) + linear_weights(predictor.model.layers)
    heads = list(torch.cat(linear_weights(predictor.lm_head)).chunk(predictor.num_codes))  # one head per step
    return linear_weights(talker.model.layers) + [talker.codec_head.weight] + step * predictor.num_codes + heads


@torch.inference_mode()
def bound_s(weights: list[Tensor], batch: int) -> float:
    """Seconds of applying every weight in turn to `batch` rows (GEMVs at one row, GEMMs above): the fastest of
    BOUND_PASSES passes after one warm-up, since a floor is what noise only raises."""
    rows = {w.shape[1]: torch.randn(batch, w.shape[1], dtype=w.dtype, device=w.device) for w in weights}
    times = []
    for i in range(BOUND_PASSES + 1):
        start = time.perf_counter()
        for w in weights:
            F.linear(rows[w.shape[1]], w)
        if i:
            times.append(time.perf_counter() - start)
    return min(times)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(parser)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on each side")
    parser.add_argument("--batch", type=int, default=16, help="rows of the GEMM bound")
    parser.add_argument("--no-official", action="store_true", help="skip the official package")


Figures = dict[str, dict[str, float | None]]


def run(args: argparse.Namespace) -> Figures:
    """ms per frame of each side (generate, decode) and of each bound, with the bound's fraction of each side's."""
    torch.set_num_threads(args.threads)
    with bench_checkpoint(args, Task.CUSTOM_VOICE) as checkpoint:
        model = Qwen3TTS.from_pretrained(checkpoint.path)
        request = SynthesisInput(text=TEXT, speaker="vivian", language="English")
        params = SamplingParams(do_sample=False, subtalker_dosample=False, max_new_tokens=args.frames + 1)
        print("timing ours and the bounds ...", file=sys.stderr)
        ours = time_ours(model, request, params, args.repeats)
        weights = frame_weights(model.talker)
        bounds = {  # seconds per frame: a B=1 pass is one frame's weight traffic, a batch-B pass B frames'
            "weight streaming (B=1 GEMV)": bound_s(weights, 1),
            f"GEMM at B={args.batch}": bound_s(weights, args.batch) / args.batch,
        }
        official = None
        if not args.no_official:
            print("timing the official qwen-tts 0.1.1 ...", file=sys.stderr)
            official = time_official(checkpoint.path, args.frames, args.repeats, args.threads)

    print(
        f"\n{checkpoint.name} model, {args.frames} frames, greedy custom voice, {args.threads} torch thread(s), "
        f"median of {args.repeats}"
    )
    sides = {"ours": [1000 * s / args.frames for s in ours]}
    if official:
        sides["official"] = [1000 * s / args.frames for s in official]
    print_sides(sides)
    size_mb = sum(w.numel() * w.element_size() for w in weights) / 1e6
    print(f"\nlimits of generate: {len(weights)} weight reads a frame, {size_mb:.1f} MB, {model.dtype}, {model.device}")
    figures: Figures = {side: {"generate_ms": ms[0], "decode_ms": ms[1]} for side, ms in sides.items()}
    return figures | print_bounds({name: 1000 * s for name, s in bounds.items()}, sides)


def print_sides(sides: dict[str, list[float]]) -> None:
    ours, official = sides["ours"], sides.get("official")
    print(f"{'':>14} {'ours':>10} {'official':>10} {'speed-up':>9}")
    for i, name in enumerate(("generate", "decode")):
        other = f"{official[i]:>10.2f} {official[i] / ours[i]:>8.2f}x" if official else f"{'-':>10} {'-':>9}"
        print(f"{name + ' ms/fr':>14} {ours[i]:>10.2f} {other}")


def print_bounds(bounds_ms: dict[str, float], sides: dict[str, list[float]]) -> Figures:
    """Each bound's ms per frame and its fraction of each side's generate time per frame (bound / time)."""
    print(f"{'':<28} {'ms/fr':>8} {'of ours':>8} {'of official':>12}")
    figures: Figures = {}
    for name, ms in bounds_ms.items():
        fractions = {f"of_{side}": ms / times[0] for side, times in sides.items()}
        official = fractions.get("of_official")
        shown = f"{official:>12.3f}" if official is not None else f"{'-':>12}"
        print(f"{name:<28} {ms:>8.3f} {fractions['of_ours']:>8.3f} {shown}")
        figures[name] = {"ms": ms, **fractions}
    return figures
