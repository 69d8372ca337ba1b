"""First audio of a request cloning a new clip: cold, against after `Engine.prepare_voice`, with the ratio.

"Prepared" is what the app does when a clip is uploaded.

    python -m profiling.bench voice --size tiny --clip-seconds 10 --repeats 3
    python -m profiling.bench voice --size mid --clip-seconds 10 --repeats 3 --think 12

Each timed request clones a clip no earlier request used (so neither the voice cache nor the decoder's prefix cache
holds it). "prepared" calls `prepare_voice` first and waits `--think` seconds, the time a user spends typing, in
which Code2Wav decodes the reference codes in the background. Greedy ICL requests of 8 frames; medians.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time

import soundfile as sf

from engine import Engine, EngineConfig, SpeechRequest
from engine.request import Task
from profiling.bench.checkpoint import GREEDY, add_checkpoint_arguments, bench_checkpoint
from profiling.bench.prompt_set import CLIP_RATE, voice_like_clip


def clip(seconds: float, seed: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, voice_like_clip(seconds, CLIP_RATE, seed=seed), CLIP_RATE, format="WAV")
    return buf.getvalue()


async def first_audio_s(engine: Engine, audio: bytes) -> float:
    request = SpeechRequest("Hello there.", ref_audio=audio, ref_text="Reference words.", max_new_tokens=8,
                            sampling=GREEDY)  # fmt: skip
    start = time.perf_counter()
    async for _ in engine.generate(request):
        return time.perf_counter() - start
    raise RuntimeError("the request produced no audio")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(p)
    p.add_argument("--clip-seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--think", type=float, default=1.0, help="seconds between prepare_voice and the request")


def run(args: argparse.Namespace) -> dict[str, float]:
    seeds = iter(range(1, 1000))
    with (
        bench_checkpoint(args, Task.VOICE_CLONE) as checkpoint,
        Engine(EngineConfig(model=str(checkpoint.path))) as engine,
    ):
        asyncio.run(first_audio_s(engine, clip(args.clip_seconds, 0)))  # warm-up
        cold = [asyncio.run(first_audio_s(engine, clip(args.clip_seconds, next(seeds)))) for _ in range(args.repeats)]
        prepared = []
        for _ in range(args.repeats):
            audio = clip(args.clip_seconds, next(seeds))
            engine.prepare_voice(audio).result()
            time.sleep(args.think)
            prepared.append(asyncio.run(first_audio_s(engine, audio)))
    out = {"cold_s": statistics.median(cold), "prepared_s": statistics.median(prepared)}
    print(
        f"{checkpoint.name}, new {args.clip_seconds:g} s clip: first audio cold {out['cold_s'] * 1000:.0f} ms, "
        f"prepared {out['prepared_s'] * 1000:.0f} ms ({out['cold_s'] / out['prepared_s']:.1f}x sooner)"
    )
    return out
