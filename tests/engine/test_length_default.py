"""How long a request runs when it names no frame limit: on random weights (which never draw EOS on their own) about
what a speaker needs for its text, capped by the engine's limit; on a real checkpoint, the checkpoint's own limit."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from engine import Engine, EngineConfig, SpeechRequest
from engine.config import LimitsConfig, StageConfig
from engine.model.qwen3_tts import Qwen3TTS
from engine.model.sampling import SamplingParams
from engine.prep import PromptPrep

TEXT = "Hello from a real client."  # 25 characters / 15 a second = 1.67 s = 20.8 frames of 80 ms
TEXT_FRAMES = 21 + 12  # rounded up, plus about a second of margin
INSTRUCT = "A calm voice."


@pytest.fixture(scope="module")
def model(checkpoints) -> Qwen3TTS:
    return Qwen3TTS.from_pretrained(checkpoints["voice_design"])


def limit(prep: PromptPrep, **request) -> int:
    return prep.prepare(SpeechRequest(TEXT, instruct=INSTRUCT, **request)).params.max_new_tokens


def test_random_weights_follow_the_text_unless_a_limit_is_asked(model):
    prep = PromptPrep(model, LimitsConfig(), 0, random_weights=True)
    assert limit(prep) == TEXT_FRAMES
    assert limit(prep, sampling=SamplingParams(temperature=0.5)) == TEXT_FRAMES  # the checkpoint's limit: none asked
    assert limit(prep, max_new_tokens=200) == 200
    assert limit(prep, sampling=SamplingParams(max_new_tokens=7)) == 7
    short = PromptPrep(model, LimitsConfig(max_new_tokens=20), 0, random_weights=True)
    assert limit(short) == 20  # capped by the engine's limit


def test_real_checkpoints_keep_the_checkpoints_limit(model):
    prep = PromptPrep(model, LimitsConfig(max_new_tokens=4096), 0)
    assert model.sampling_defaults.max_new_tokens == 8192
    assert limit(prep) == 4096


def frames(engine: Engine, request: SpeechRequest) -> int:
    async def run() -> int:
        return sum([chunk.frames async for chunk in engine.generate(request)])

    return asyncio.run(run())


def test_the_embedded_model_ends_by_the_texts_length():
    uni = StageConfig(executor="uni", max_num_seqs=2)
    with Engine(EngineConfig(tiny_task="voice_design", talker=uni, code2wav=dataclasses.replace(uni))) as engine:
        assert engine.info.tiny
        assert frames(engine, SpeechRequest(TEXT, instruct=INSTRUCT, seed=1)) <= TEXT_FRAMES
        # EOS masked throughout: the stream runs to its limit and ends there (a limit of N draws leaves N - 1
        # frames, as the official generate does)
        never_stops = SamplingParams(min_new_tokens=10_000)
        assert frames(engine, SpeechRequest(TEXT, instruct=INSTRUCT, sampling=never_stops, seed=2)) == TEXT_FRAMES - 1
        assert frames(engine, SpeechRequest(TEXT, instruct=INSTRUCT, max_new_tokens=5, seed=3)) <= 5


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
