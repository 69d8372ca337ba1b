"""The serving engine against its ceiling and its peer: audio seconds per wall second and time to first audio.

    python -m profiling.bench engine --size tiny --concurrency 1 4 16 32 64 --executors uni-uni mp-mp --frames 40
    python -m profiling.bench engine --size mid --concurrency 1 4 --executors uni-uni mp-mp --frames 25

For each concurrency c, c greedy custom-voice requests of exactly `--frames` frames (random weights never sample EOS)
are sent at once, to one engine per executor pair started once for every c. Beside the engine (one row per executor
pair) it times:
- the ceiling: the same two stages stepped in one thread with no runtime (the pure model loop on the same batch);
- the peer: the official qwen-tts 0.1.1 generating the same c requests as one batched call (it cannot stream, so its
  time to first audio is its whole time).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import Engine, EngineConfig, SpeechRequest
from engine.config import ChunkingConfig, StageConfig
from engine.model.qwen3_tts import Qwen3TTS
from engine.prep import PromptPrep
from engine.request import Task
from engine.stages.code2wav import Code2WavStage
from engine.stages.messages import AudioOut, CodeChunk, Credit
from engine.stages.talker import TalkerStage
from profiling.bench.checkpoint import GREEDY, add_checkpoint_arguments, bench_checkpoint
from profiling.metrics import percentiles, request_metrics, run_metrics
from reference.client import ReferenceUnavailable, run_official

TEXT = "Voxtrace streams this sentence while it is still being generated."
SAMPLE_RATE = 24000


@dataclass
class Row:
    name: str
    audio_per_s: float
    ttfa_p50_s: float
    ttfa_p90_s: float


def requests(c: int, frames: int) -> list[SpeechRequest]:
    return [
        SpeechRequest(
            text=TEXT,
            speaker="vivian",
            language="English",
            sampling=GREEDY,
            max_new_tokens=frames + 1,
            request_id=f"r{i}",
        )
        for i in range(c)
    ]


async def _engine_round(engine: Engine, batch: list[SpeechRequest]) -> Row:
    start = time.perf_counter()

    async def one(request: SpeechRequest):
        t0, arrivals, samples = time.perf_counter(), [], []
        async for chunk in engine.generate(request):
            arrivals.append(time.perf_counter())
            samples.append(len(chunk.samples))
        return request_metrics(request.request_id, t0, arrivals, samples, SAMPLE_RATE)

    per_request = await asyncio.gather(*(one(r) for r in batch))
    run = run_metrics(per_request, time.perf_counter() - start)
    return Row("", run.audio_s_per_s, run.ttfa_s.p50, run.ttfa_s.p90)


def time_engine(checkpoint: Path, executors: str, concurrency: list[int], frames: int, threads: int) -> dict[int, Row]:
    """One engine, sized for the largest c, timed at each c in turn (a start per level would dominate the run)."""
    talker, code2wav = executors.split("-")
    c_max = max(concurrency)
    config = EngineConfig(
        model=str(checkpoint),
        talker=StageConfig(executor=talker, max_num_seqs=c_max, threads=threads, max_model_len=frames + 256),
        code2wav=StageConfig(executor=code2wav, max_num_seqs=c_max, threads=threads),
    )
    rows = {}
    with Engine(config) as engine:
        asyncio.run(_engine_round(engine, requests(1, 4)))  # warm-up
        for c in concurrency:
            print(f"  engine {executors} at c={c} ...", file=sys.stderr)
            rows[c] = asyncio.run(_engine_round(engine, requests(c, frames)))
            rows[c].name = f"engine {executors}"
    return rows


def time_ceiling(model: Qwen3TTS, c: int, frames: int) -> Row:
    """Both stages stepped in this thread, every chunk handed over at once: no threads, queues or copies."""
    talker = TalkerStage(
        model.talker, model.config, StageConfig(max_num_seqs=c, max_model_len=frames + 256), ChunkingConfig()
    )
    code2wav = Code2WavStage(model.speech_tokenizer.decoder, StageConfig(max_num_seqs=c))
    prep = PromptPrep(model, EngineConfig().limits, 0)
    jobs = [prep.prepare(r) for r in requests(c, frames)]
    start = time.perf_counter()
    first: dict[str, float] = {}
    audio = 0
    for job in jobs:
        talker.submit(job)
    done = 0
    while done < c:
        for out in talker.step() if talker.has_work() else []:
            if isinstance(out, CodeChunk):
                code2wav.submit(out)
                talker.submit(Credit(out.request_id))
        for out in code2wav.step() if code2wav.has_work() else []:
            if isinstance(out, AudioOut):
                first.setdefault(out.request_id, time.perf_counter() - start)
                audio += out.samples.numel()
                done += out.is_last
    wall = time.perf_counter() - start
    ttfa = percentiles(list(first.values()))
    return Row("ceiling (stages, one thread)", audio / SAMPLE_RATE / wall, ttfa.p50, ttfa.p90)


def time_official(checkpoint: Path, c: int, frames: int, threads: int) -> Row | None:
    batch = {
        "task": "custom_voice",
        "text": [TEXT] * c,
        "speaker": ["vivian"] * c,
        "language": "English",
        "gen": {"do_sample": False, "subtalker_dosample": False, "max_new_tokens": frames + 1},
    }
    try:
        results = run_official(
            [
                {
                    "checkpoint": str(checkpoint),
                    "cases": [
                        {**batch, "name": "warmup", "text": TEXT, "speaker": "vivian"},
                        {**batch, "name": "batch"},
                    ],
                }
            ],
            threads=threads,
        )
    except ReferenceUnavailable:
        return None
    seconds = results[f"{checkpoint.name}/batch"]["seconds"]
    return Row("official qwen-tts (batched)", c * frames * 0.08 / seconds, seconds, seconds)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(parser)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    parser.add_argument(
        "--executors", nargs="+", default=["uni-uni", "mp-mp"], choices=["uni-uni", "uni-mp", "mp-uni", "mp-mp"]
    )
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per stage (and for the peer)")
    parser.add_argument("--no-official", action="store_true", help="skip the official package")


def run(args: argparse.Namespace) -> dict[int, list[Row]]:
    """Each c's rows: the engine per executor pair, the ceiling, and the official package when it ran."""
    torch.set_num_threads(args.threads)
    with bench_checkpoint(args, Task.CUSTOM_VOICE) as bench:
        checkpoint = bench.path
        engines = {e: time_engine(checkpoint, e, args.concurrency, args.frames, args.threads) for e in args.executors}
        model = Qwen3TTS.from_pretrained(checkpoint)
        time_ceiling(model, 1, 4)  # warm-up
        print(
            f"\n{bench.name} model, greedy custom voice, {args.frames} frames ({args.frames * 0.08:.1f} s of audio) "
            f"per request, {args.threads} torch thread(s) per stage"
        )
        print(
            f"{'c':>3} {'':<30} {'audio s/s':>10} {'TTFA p50':>9} {'TTFA p90':>9} "
            f"{'vs ceiling':>11} {'vs official':>12}"
        )
        table = {}
        for c in args.concurrency:
            print(f"  ceiling and peer at c={c} ...", file=sys.stderr)
            ceiling = time_ceiling(model, c, args.frames)
            official = None if args.no_official else time_official(checkpoint, c, args.frames, args.threads)
            table[c] = [*(engines[e][c] for e in args.executors), ceiling, *([official] if official else [])]
            for row in table[c]:
                vs_ceiling = f"{row.audio_per_s / ceiling.audio_per_s:>10.2f}x"
                vs_official = f"{row.audio_per_s / official.audio_per_s:>11.2f}x" if official else f"{'-':>12}"
                print(
                    f"{c:>3} {row.name:<30} {row.audio_per_s:>10.2f} {row.ttfa_p50_s * 1000:>7.0f}ms "
                    f"{row.ttfa_p90_s * 1000:>7.0f}ms {vs_ceiling} {vs_official}"
                )
    return table
