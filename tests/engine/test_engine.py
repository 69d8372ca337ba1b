"""The serving engine end to end on the tiny model: what a caller of `Engine` relies on."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile as sf
import torch

from engine import Engine, EngineConfig, EngineError, RequestError, SpeechRequest
from engine.config import StageConfig
from engine.model.audio import load_reference_audio
from engine.model.qwen3_tts import Qwen3TTS, SynthesisInput
from engine.model.sampling import SamplingParams
from profiling import events as ev

GREEDY = SamplingParams(do_sample=False, subtalker_dosample=False)
REF_TEXT = "This is the reference clip."


def engine_config(checkpoint: Path, talker: str = "uni", code2wav: str = "uni", **stage) -> EngineConfig:
    return EngineConfig(
        model=str(checkpoint),
        talker=StageConfig(executor=talker, max_num_seqs=stage.get("max_num_seqs", 8)),
        code2wav=StageConfig(executor=code2wav, max_num_seqs=4),
    )


@pytest.fixture(scope="module")
def uni(checkpoints) -> Engine:
    with Engine(engine_config(checkpoints["base"])) as engine:
        yield engine


@pytest.fixture(scope="module")
def mp(checkpoints) -> Engine:
    with Engine(engine_config(checkpoints["base"], "mp", "mp")) as engine:
        yield engine


@pytest.fixture(scope="module")
def reference(checkpoints) -> Qwen3TTS:
    return Qwen3TTS.from_pretrained(checkpoints["base"])


def clone(clips, frames: int = 20, **kw) -> SpeechRequest:
    fields = {
        "text": "Streaming speech, chunk by chunk.",
        "language": "English",
        "ref_audio": clips["mono"].read_bytes(),
        "ref_text": REF_TEXT,
        "sampling": GREEDY,
        "max_new_tokens": frames + 1,
    }
    return SpeechRequest(**{**fields, **kw})


async def collect(engine: Engine, request: SpeechRequest) -> list:
    return [chunk async for chunk in engine.generate(request)]


def reference_audio(model: Qwen3TTS, request: SpeechRequest, clips, seed: int | None) -> np.ndarray:
    clip = load_reference_audio(request.ref_audio, max_seconds=30)
    voice = model.create_voice_prompt(clip, request.ref_text, x_vector_only=request.x_vector_only)
    params = dataclasses.replace(request.sampling or model.sampling_defaults, max_new_tokens=request.max_new_tokens)
    inp = SynthesisInput(task="voice_clone", text=request.text, language=request.language, voice=voice)
    wav = model.synthesize(inp, params, seed=seed).wav
    # the official ICL cut int(ref/total * N) can keep one extra leading sample; the stream cuts at ref * 1920
    return wav[len(wav) % 1920 :] if voice.icl else wav


def test_mp_stages_hold_the_weights_the_engine_process_lets_go(mp: Engine, uni: Engine, clips) -> None:
    def on_meta(module: torch.nn.Module) -> bool:
        return all(p.device.type == "meta" for p in module.parameters())

    model = mp.model
    assert on_meta(model.talker) and on_meta(model.speech_tokenizer.decoder)
    assert not on_meta(model.network.speaker_encoder) and not on_meta(model.speech_tokenizer.encoder)
    assert not on_meta(uni.model.talker) and not on_meta(uni.model.speech_tokenizer.decoder)  # uni stages use them
    np.testing.assert_array_equal(mp.synthesize(clone(clips, frames=6)).wav, uni.synthesize(clone(clips, frames=6)).wav)
    with pytest.raises(RuntimeError, match="talker weights were released"):
        model.generate_codes(SynthesisInput("voice_clone", "Hi.", voice=None), GREEDY)


@pytest.mark.parametrize("kind", ["icl_greedy", "icl_seeded", "xvector_greedy", "xvector_seeded"])
def test_a_single_stream_equals_the_reference_path(kind: str, uni: Engine, reference: Qwen3TTS, clips) -> None:
    seeded = kind.endswith("seeded")
    request = clone(
        clips,
        x_vector_only=kind.startswith("xvector"),
        seed=11 if seeded else None,
        sampling=None if seeded else GREEDY,
    )
    synthesis = uni.synthesize(request)
    expected = reference_audio(reference, request, clips, seed=11 if seeded else None)
    assert synthesis.wav.shape == expected.shape
    np.testing.assert_allclose(synthesis.wav, expected, rtol=0, atol=1e-5)


def test_chunks_arrive_in_order_first_small_then_steady(uni: Engine, clips) -> None:
    chunks = asyncio.run(collect(uni, clone(clips, frames=20)))
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [c.frames for c in chunks] == [2, 8, 8, 2]  # first_chunk_frames 2, chunk_frames 8
    assert [c.is_last for c in chunks] == [False, False, False, True]
    starts = np.cumsum([0] + [len(c.samples) for c in chunks[:-1]])
    assert [c.start_sample for c in chunks] == list(starts)
    assert all(c.emitted_ns >= c.submitted_ns for c in chunks)


def test_uni_and_mp_give_the_same_audio(uni: Engine, mp: Engine, clips) -> None:
    for request in (clone(clips, seed=3, sampling=None), clone(clips, x_vector_only=True)):
        np.testing.assert_allclose(mp.synthesize(request).wav, uni.synthesize(request).wav, rtol=0, atol=1e-6)


def test_32_concurrent_streams_all_complete_whole_and_in_order(uni: Engine, reference: Qwen3TTS, clips) -> None:
    requests = [clone(clips, frames=4 + i % 9, x_vector_only=i % 2 == 1, seed=i, sampling=None) for i in range(32)]

    async def run_all() -> list[list]:
        return await asyncio.gather(*(collect(uni, r) for r in requests))

    results = asyncio.run(run_all())
    for request, chunks in zip(requests, results, strict=True):
        assert [c.index for c in chunks] == list(range(len(chunks))) and chunks[-1].is_last
        assert sum(c.frames for c in chunks) == request.max_new_tokens - 1
    for i in (0, 1, 17):  # batched with 7 others, a stream still equals its reference run
        wav = np.concatenate([c.samples for c in results[i]])
        np.testing.assert_allclose(wav, reference_audio(reference, requests[i], clips, seed=i), rtol=0, atol=1e-4)


def test_a_cancelled_stream_frees_its_slot(checkpoints, clips) -> None:
    config = engine_config(checkpoints["base"], max_num_seqs=1)
    with Engine(config) as engine:

        async def cancel_after_first_chunk() -> None:
            stream = engine.generate(clone(clips, frames=400))
            first = await anext(stream)
            assert first.index == 0
            await stream.aclose()

        asyncio.run(cancel_after_first_chunk())
        # the only talker slot is free again: the next request runs to the end
        done = engine.synthesize(clone(clips, frames=6))
        assert sum(c.frames for c in done.chunks) == 6
        assert engine._stages["talker"].in_flight() == []


def test_a_killed_worker_fails_its_requests_and_is_replaced(checkpoints, clips) -> None:
    with Engine(engine_config(checkpoints["base"], "mp", "uni")) as engine:
        pid = engine._stages["talker"].pid

        async def killed_mid_stream() -> None:
            stream = engine.generate(clone(clips, frames=2000))
            await anext(stream)
            os.kill(pid, signal.SIGKILL)
            start = time.monotonic()
            with pytest.raises(EngineError, match="talker worker died"):
                async for _ in stream:
                    pass
            assert time.monotonic() - start < 5

        asyncio.run(killed_mid_stream())
        # the next request waits for the replacement worker and succeeds
        assert sum(c.frames for c in engine.synthesize(clone(clips, frames=5)).chunks) == 5
        assert engine._stages["talker"].pid != pid


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"text": "   "}, "input", "empty"),
        ({"text": "x" * 2001}, "input", "limit is 2000"),
        ({"language": "klingon"}, "language", "not one of"),
        ({"task": "custom_voice"}, "task", "serves 'voice_clone'"),
        ({"task": "singing"}, "task", "not one of"),
        ({"ref_text": None}, "ref_text", "transcript"),
        ({"ref_audio": None}, "ref_audio", "needs a reference clip"),
        ({"ref_audio": b"not audio at all"}, "ref_audio", "not a readable audio file"),
        ({"ref_audio": (np.zeros(24000, np.float32), 24000)}, "ref_audio", "silent"),
        ({"ref_audio": (np.zeros(0, np.float32), 24000)}, "ref_audio", "empty"),
        ({"ref_audio": (np.ones(24000 * 31, np.float32) * 0.1, 24000)}, "ref_audio", "too long"),
        ({"ref_audio": (np.full(24000, np.nan, np.float32), 24000)}, "ref_audio", "NaN"),
        ({"max_new_tokens": 0}, "max_new_tokens", ">= 1"),
        ({"sampling": SamplingParams(temperature=0.9, top_p=1.0), "max_new_tokens": -3}, "max_new_tokens", ">= 1"),
    ],
)
def test_bad_input_is_refused_by_field_while_a_good_request_completes(
    uni: Engine, clips, change: dict, field: str, message: str
) -> None:
    async def both() -> tuple[list, Exception]:
        good = asyncio.create_task(collect(uni, clone(clips, frames=12)))
        with pytest.raises(RequestError, match=message) as refused:
            await collect(uni, clone(clips, **change))
        return await good, refused.value

    chunks, error = asyncio.run(both())
    assert error.field == field
    assert sum(c.frames for c in chunks) == 12


def test_converted_reference_audio_is_accepted(uni: Engine, clips) -> None:
    # a 16 kHz stereo clip is downmixed and resampled, not refused
    chunks = asyncio.run(collect(uni, clone(clips, frames=3, ref_audio=clips["stereo"].read_bytes())))
    assert sum(c.frames for c in chunks) == 3


def test_close_leaves_no_process_thread_or_shared_memory(checkpoints, clips) -> None:
    shm_before = set(os.listdir("/dev/shm"))
    threads_before = set(threading.enumerate())
    children_before = set(psutil.Process().children(recursive=True))  # other engines of this module
    engine = Engine(engine_config(checkpoints["base"], "mp", "mp"))
    assert len(set(psutil.Process().children(recursive=True)) - children_before) >= 2
    engine.synthesize(clone(clips, frames=3))
    engine.close()
    assert set(psutil.Process().children(recursive=True)) - children_before == set()
    assert set(os.listdir("/dev/shm")) - shm_before == set()
    time.sleep(0.2)
    assert {t for t in threading.enumerate() if t.is_alive()} - threads_before == set()
    with pytest.raises(EngineError, match="closed"):
        engine.synthesize(clone(clips, frames=3))


def test_a_second_request_with_the_same_clip_skips_the_encoders(checkpoints, clips) -> None:
    with Engine(engine_config(checkpoints["base"])) as engine:
        first = engine.synthesize(clone(clips, frames=4))
        assert (engine.prep.voices.hits, engine.prep.voices.misses) == (0, 1)
        again = engine.synthesize(clone(clips, frames=4))
        assert (engine.prep.voices.hits, engine.prep.voices.misses) == (1, 1)
        np.testing.assert_array_equal(again.wav, first.wav)
        assert 0 < engine.prep.voices.bytes <= engine.config.voice_cache_mb * 2**20


@pytest.mark.parametrize("executors", ["uni", "mp"])
def test_a_clip_prepared_ahead_spares_the_first_request_its_encoders_and_prefix_decode(
    executors: str, request: pytest.FixtureRequest, clips, tmp_path: Path
) -> None:
    engine: Engine = request.getfixturevalue(executors)
    samples, rate = sf.read(clips["mono"])
    fresh = tmp_path / "fresh.wav"  # a clip no other test of this engine clones
    sf.write(fresh, samples * (0.5 if executors == "uni" else 0.6), rate)
    clip = fresh.read_bytes()
    engine.timeline()  # drop the events of earlier tests
    voice = engine.prepare_voice(clip).result(timeout=60)
    assert voice.icl and voice.ref_text is None  # the transcript comes with each request
    ref_frames = voice.ref_codes.shape[0]
    deadline, warmed = time.monotonic() + 60, []
    while not warmed:  # code2wav decodes the reference codes in the background
        assert time.monotonic() < deadline, "the prefix was never warmed"
        warmed = [e for e in engine.timeline().select(name=ev.CODE2WAV_DECODE) if e.args.get("warming")]
    assert warmed[0].args["frames"] == ref_frames
    hits, misses = engine.prep.voices.hits, engine.prep.voices.misses
    engine.synthesize(clone(clips, frames=3, ref_audio=clip))
    assert (engine.prep.voices.hits, engine.prep.voices.misses) == (hits + 1, misses)
    decoded = [e.args["frames"] for e in engine.timeline().select(name=ev.CODE2WAV_DECODE)]
    assert ref_frames not in decoded and sum(decoded) == 3  # only the request's own three frames
    with pytest.raises(RequestError) as refused:
        engine.prepare_voice(b"not audio").result(timeout=60)
    assert refused.value.field == "ref_audio"
