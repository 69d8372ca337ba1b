"""The serving engine end to end on the tiny model: what a caller of `Engine` relies on."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import re
import shutil
import signal
import threading
import time
from multiprocessing import resource_tracker
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile as sf
import torch

from engine import Engine, EngineConfig, EngineError, RequestError, SpeechRequest, StageUnavailable
from engine.config import ConfigError, DecodeConfig, MemoryConfig, StageConfig
from engine.model.audio import load_reference_audio
from engine.model.qwen3_tts import Qwen3TTS, SynthesisInput
from engine.model.sampling import SamplingParams
from engine.runtime.restarter import StageState
from engine.runtime.transport import RING_PREFIX
from telemetry import events as ev

GREEDY = SamplingParams(do_sample=False, subtalker_dosample=False)
REF_TEXT = "This is the reference clip."


def engine_config(checkpoint: Path, talker: str = "uni", code2wav: str = "uni", **stage) -> EngineConfig:
    """Both stages with the given executors; `stage` holds StageConfig fields of the talker (restart settings
    apply to both). Sampling is `official`, so that seeded streams equal the reference path's."""
    restarts = {k: v for k, v in stage.items() if k.startswith("restart_")}
    return EngineConfig(
        model=str(checkpoint),
        talker=StageConfig(executor=talker, **{"max_num_seqs": 8, **stage}),
        code2wav=StageConfig(executor=code2wav, max_num_seqs=4, **restarts),
        decode=DecodeConfig(sampling_mode="official"),
    )


def wait_until(condition, timeout: float = 60.0, what: str = "the condition") -> None:
    """Wait for a condition the engine raises no event for (a new worker's pid, readiness), generously bounded."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.01)


def kill_mid_stream(engine: Engine, clips, pid: int) -> EngineError:
    """A long request's first chunk, then SIGKILL to the worker `pid`: what the rest of that stream raised."""

    async def killed() -> EngineError:
        stream = engine.generate(clone(clips, frames=2000))
        await anext(stream)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EngineError) as died:
            async for _ in stream:
                pass
        return died.value

    return asyncio.run(asyncio.wait_for(killed(), 60))


def our_rings() -> set[str]:
    """The shared-memory segments this process made (other processes may make and drop theirs meanwhile)."""
    return {name for name in os.listdir("/dev/shm") if name.startswith(f"{RING_PREFIX}{os.getpid()}_")}


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


def assert_clean(message: str) -> None:
    """What a client may read: no traceback, no Python type or object, no server path."""
    leak = re.search(r"Traceback|\w+(Error|Exception)\b|<[\w.]+ object|0x[0-9a-f]{6,}|(^|[\s'\"(=])/[\w.-]+/", message)
    assert leak is None, f"{message!r} leaks {leak.group(0)!r}"


def unchecked(**changes) -> SamplingParams:
    """Sampling settings changed after they were built, past their own checks: the engine must still refuse them."""
    params = SamplingParams()
    for name, value in changes.items():
        setattr(params, name, value)
    return params


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
    inp = SynthesisInput(text=request.text, language=request.language, voice=voice)
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
        model.generate_codes(SynthesisInput("Hi.", voice=None), GREEDY)


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
    assert [c.frames for c in chunks] == [2, 2, 4, 8, 4]  # first_chunk_frames 2, ramping up to chunk_frames 8
    assert [c.is_last for c in chunks] == [False, False, False, False, True]
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


def test_a_batch_invariant_stream_is_the_same_alone_and_among_16(checkpoints, clips) -> None:
    """The serving default (`fast` sampling) with `batch_invariant`: a seeded stream's audio, sample for sample, is the
    same alone and among 15 other streams of other lengths and settings."""
    config = dataclasses.replace(
        engine_config(checkpoints["base"], max_num_seqs=16), decode=DecodeConfig(batch_invariant=True)
    )
    target = clone(clips, frames=24, seed=5, sampling=None, request_id="target")
    others = [
        clone(
            clips,
            frames=3 + i,
            x_vector_only=i % 2 == 1,
            seed=100 + i,
            sampling=SamplingParams(temperature=0.5 + i / 10),
        )
        for i in range(15)
    ]
    with Engine(config) as engine:
        alone = engine.synthesize(target).wav

        async def crowded() -> list:
            streams = await asyncio.gather(*(collect(engine, r) for r in [*others[:8], target, *others[8:]]))
            return streams[8]

        among = np.concatenate([c.samples for c in asyncio.run(crowded())])
    np.testing.assert_array_equal(among, alone)


def test_a_cancelled_stream_frees_its_slot(checkpoints, clips) -> None:
    config = engine_config(checkpoints["base"], max_num_seqs=1)
    with Engine(config) as engine:
        cancelled = clone(clips, frames=400)

        async def cancel_after_first_chunk() -> None:
            stream = engine.generate(cancelled)
            first = await anext(stream)
            assert first.index == 0
            await stream.aclose()

        asyncio.run(cancel_after_first_chunk())
        # the only talker slot is free again: the next request runs to the end
        done = engine.synthesize(clone(clips, frames=6))
        assert sum(c.frames for c in done.chunks) == 6
        assert engine.router.requests_in("talker") == []
        # the stages still drop late chunks of the cancelled id: reusing it is refused by name, not left to stall
        with pytest.raises(RequestError, match="request_id: .* cancelled earlier"):
            engine.synthesize(cancelled)
        # a request refused before it reached a stage leaves nothing to drop: its id may be used again
        refused = dataclasses.replace(clone(clips, frames=6), language="klingon")
        with pytest.raises(RequestError, match="language"):
            engine.synthesize(refused)
        assert sum(c.frames for c in engine.synthesize(dataclasses.replace(refused, language="auto")).chunks) == 6


def test_a_killed_worker_fails_its_requests_and_is_replaced(checkpoints, clips) -> None:
    with Engine(engine_config(checkpoints["base"], "mp", "uni")) as engine:
        pid = engine.router.stages["talker"].pid
        died = str(kill_mid_stream(engine, clips, pid))
        assert "talker worker died" in died
        assert_clean(died)  # the exit status and any traceback are in the log, not here
        wait_until(lambda: engine.ready()["talker"], what="a new talker worker")
        assert sum(c.frames for c in engine.synthesize(clone(clips, frames=5)).chunks) == 5
        assert engine.router.stages["talker"].pid != pid and engine.requests_in_flight == 0


def test_a_replacement_killed_in_its_start_up_is_replaced_again(checkpoints, clips) -> None:
    """The double kill: the worker, then its replacement while it starts. Nothing wedges: requests in the meantime
    fail fast or succeed, never wait; a new worker comes up; every place in the engine is given back."""
    with Engine(engine_config(checkpoints["base"], "mp", "uni", restart_backoff_s=0.1)) as engine:
        talker = engine.router.stages["talker"]
        first = talker.pid

        assert "talker worker died" in str(kill_mid_stream(engine, clips, first))
        wait_until(lambda: talker.pid not in (None, first), what="the replacement")
        os.kill(talker.pid, signal.SIGKILL)  # it is still loading its weights
        try:  # meanwhile a request gets an answer at once (unless a third worker is already up)
            asyncio.run(asyncio.wait_for(collect(engine, clone(clips, frames=3)), 60))
        except StageUnavailable as exc:
            assert exc.stage == "talker"
        wait_until(lambda: engine.ready()["talker"], what="a third talker worker")
        assert sum(c.frames for c in engine.synthesize(clone(clips, frames=5)).chunks) == 5
        assert engine.requests_in_flight == 0


def test_while_a_stage_has_no_worker_requests_fail_fast_and_restarts_give_up_in_bounded_time(
    checkpoints, clips, tmp_path: Path, monkeypatch, caplog
) -> None:
    checkpoint = shutil.copytree(checkpoints["base"], tmp_path / "base")
    config = engine_config(checkpoint, "mp", "uni", restart_backoff_s=0.1, restart_max_s=2.0)
    with Engine(config) as engine:
        prepared: list[str] = []
        monkeypatch.setattr(engine.prep, "prepare", lambda request: prepared.append(request.request_id))
        checkpoint.rename(tmp_path / "moved")  # a replacement worker finds no weights to load
        os.kill(engine.router.stages["talker"].pid, signal.SIGKILL)
        wait_until(lambda: not engine.ready()["talker"], what="the death to be seen")

        with pytest.raises(StageUnavailable) as refused:
            asyncio.run(collect(engine, clone(clips, frames=3)))
        assert refused.value.stage == "talker" and prepared == [] and engine.requests_in_flight == 0

        wait_until(lambda: engine.router.restarters["talker"].state is StageState.DOWN, what="the restarts to give up")
        (tmp_path / "moved").rename(checkpoint)  # too late: a stage that gave up stays down
        with pytest.raises(StageUnavailable, match="the talker stage is down"):
            asyncio.run(collect(engine, clone(clips, frames=3)))
        assert engine.ready() == {"code2wav": True, "talker": False}
        gave_up = [r for r in caplog.records if "the stage stays down" in r.getMessage()]
        assert len(gave_up) == 1 and gave_up[0].levelname == "ERROR"


def test_a_caller_that_leaves_frees_its_place_at_once_even_during_prompt_prep(uni: Engine, clips, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    prepare, prepared = uni.prep.prepare, []

    def slow_prepare(request: SpeechRequest):
        prepared.append(request.request_id)
        if request.request_id == "slow":
            entered.set()
            release.wait(60)
        return prepare(request)

    monkeypatch.setattr(uni.prep, "prepare", slow_prepare)

    async def leave_while_preparing() -> list:
        slow = asyncio.create_task(collect(uni, clone(clips, frames=3, request_id="slow")))
        assert await asyncio.to_thread(entered.wait, 60)  # its prep runs
        queued = asyncio.create_task(collect(uni, clone(clips, frames=3, request_id="queued")))
        while uni.requests_in_flight < 2:  # admitted, its prep queued behind the slow one
            await asyncio.sleep(0.01)
        for task in (queued, slow):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert uni.requests_in_flight == 0 and not release.is_set()  # both places back, the slow prep still runs
        release.set()
        return await collect(uni, clone(clips, frames=3, request_id="next"))

    chunks = asyncio.run(asyncio.wait_for(leave_while_preparing(), 60))
    assert sum(c.frames for c in chunks) == 3
    assert prepared == ["slow", "next"]  # the prep of the request that left while queued never ran


@pytest.mark.parametrize("executors", ["uni", "mp"])
def test_a_request_that_fails_inside_the_talker_step_fails_alone(
    executors: str, request: pytest.FixtureRequest, clips, monkeypatch
) -> None:
    """A job no check would let through (a nan x-vector: every probability of its seeded draw is nan) raises inside
    the talker's real decode step. Only that request fails; the stage keeps its worker, and a stream running beside
    it completes whole, byte-identical to the same request alone."""
    engine: Engine = request.getfixturevalue(executors)
    pid = engine.router.stages["talker"].pid
    live = functools.partial(clone, clips, frames=60)
    alone = engine.synthesize(live()).wav
    prepare = engine.prep.prepare

    def poisoned(request: SpeechRequest):
        job = prepare(request)
        if request.request_id == "poisoned":
            job.x_vector = torch.full_like(job.x_vector, float("nan"))
        return job

    monkeypatch.setattr(engine.prep, "prepare", poisoned)

    async def side_by_side() -> tuple[list, Exception]:
        stream = engine.generate(live())
        first = await anext(stream)  # in the talker now (until its credits run out)
        with pytest.raises(EngineError) as failed:
            await collect(engine, clone(clips, frames=60, sampling=None, seed=7, request_id="poisoned"))
        return [first, *[chunk async for chunk in stream]], failed.value

    chunks, error = asyncio.run(asyncio.wait_for(side_by_side(), 120))
    assert str(error) == "request poisoned failed: talker: the decode step failed"
    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks]), alone)
    assert engine.router.stages["talker"].pid == pid and engine.ready() == {"code2wav": True, "talker": True}


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
        ({"max_new_tokens": 0}, "max_new_tokens", "at least 1"),
        (
            {"sampling": SamplingParams(temperature=0.9, top_p=1.0), "max_new_tokens": -3},
            "max_new_tokens",
            "at least 1",
        ),
        ({"max_new_tokens": 4097}, "max_new_tokens", r"at most 4096 \(this engine's limit\)"),
        ({"max_new_tokens": 2.5}, "max_new_tokens", "whole number"),
        ({"seed": True}, "seed", "whole number"),  # a bool is not taken as 1
        ({"seed": -1}, "seed", "at least 0"),
        ({"seed": 2**64}, "seed", "at most"),
        ({"sampling": unchecked(temperature=1e308)}, "temperature", "between"),
        ({"sampling": unchecked(temperature=float("nan"))}, "temperature", "finite"),
        ({"sampling": unchecked(repetition_penalty=1e-300)}, "repetition_penalty", "between"),
        ({"sampling": unchecked(top_p=1.5)}, "top_p", r"\(0, 1\]"),
        ({"sampling": unchecked(top_k=-1)}, "top_k", "between 0"),
        ({"sampling": unchecked(subtalker_temperature=float("inf"))}, "subtalker_temperature", "finite"),
        ({"text": "a lone \ud800 surrogate"}, "input", "not valid Unicode"),
        ({"text": b"bytes, not text"}, "input", "must be text"),
        ({"ref_text": "a lone \udfff surrogate"}, "ref_text", "not valid Unicode"),
        ({"ref_text": "x" * 2001}, "ref_text", "limit is 2000"),
        ({"language": "\ud800"}, "language", "not valid Unicode"),
        ({"x_vector_only": "yes"}, "x_vector_only_mode", "true or false"),
        ({"ref_audio": "/etc/passwd"}, "ref_audio", "bytes of an audio file"),
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
    assert_clean(str(error))


def test_a_huge_transcript_is_refused_without_waiting_for_the_prep_thread(uni: Engine, clips, monkeypatch) -> None:
    """A 9.6 MB transcript is refused on the caller's side, even while the prompt-prep thread is busy: it never
    queues there, where its tokenizing would take tens of seconds while every other request waits."""
    busy, release, returned = threading.Event(), threading.Event(), threading.Event()

    def slow_encode(*args, **kwargs):
        busy.set()
        release.wait(60)  # by the test, once the big request was refused
        returned.set()
        raise RequestError("ref_audio", "not this one")

    monkeypatch.setattr(uni.prep, "encode", slow_encode)
    occupied = uni.prepare_voice(b"a clip")
    assert busy.wait(60)
    try:
        with pytest.raises(RequestError, match="limit is 2000") as refused:
            asyncio.run(collect(uni, clone(clips, ref_text="word " * 1_920_000)))
        assert refused.value.field == "ref_text"
        assert not returned.is_set()  # refused while the prep thread was still busy
    finally:
        release.set()
    with pytest.raises(RequestError):
        occupied.result(timeout=60)


def test_converted_reference_audio_is_accepted(uni: Engine, clips) -> None:
    # a 16 kHz stereo clip is downmixed and resampled, not refused
    chunks = asyncio.run(collect(uni, clone(clips, frames=3, ref_audio=clips["stereo"].read_bytes())))
    assert sum(c.frames for c in chunks) == 3


def test_close_leaves_no_process_thread_or_shared_memory(checkpoints, clips) -> None:
    resource_tracker.ensure_running()  # a long-lived child of its own, not the engine's
    threads_before, rings_before = set(threading.enumerate()), our_rings()
    children_before = set(psutil.Process().children(recursive=True))  # other engines of this module
    engine = Engine(engine_config(checkpoints["base"], "mp", "mp"))
    assert len(set(psutil.Process().children(recursive=True)) - children_before) >= 2
    assert len(our_rings() - rings_before) == 4  # one each way per worker
    engine.synthesize(clone(clips, frames=3))
    engine.close()
    assert set(psutil.Process().children(recursive=True)) - children_before == set()
    assert our_rings() == rings_before
    assert {t for t in threading.enumerate() if t.is_alive()} - threads_before == set()  # joined, not left to end
    with pytest.raises(EngineError, match="closed"):
        engine.synthesize(clone(clips, frames=3))


def test_close_ends_streams_in_flight_and_stops_a_stuck_worker_within_its_grace(checkpoints, clips) -> None:
    """What SIGTERM does to the app: streams in flight (one still in prompt prep) end with an EngineError at once;
    a worker that does not stop by itself (here: stopped by SIGSTOP) is killed after the grace."""
    resource_tracker.ensure_running()
    children_before, rings_before = set(psutil.Process().children(recursive=True)), our_rings()
    engine = Engine(engine_config(checkpoints["base"], "mp", "mp"))
    prepare, release = engine.prep.prepare, threading.Event()

    def stuck_prepare(request: SpeechRequest):
        release.wait(60)
        return prepare(request)

    async def close_mid_stream() -> None:
        streams = [engine.generate(clone(clips, frames=2000)) for _ in range(3)]
        for stream in streams:
            await anext(stream)
        engine.prep.prepare = stuck_prepare
        preparing = asyncio.create_task(collect(engine, clone(clips, frames=3)))
        while engine.requests_in_flight < 4:
            await asyncio.sleep(0.01)
        os.kill(engine.router.stages["talker"].pid, signal.SIGSTOP)
        closer = threading.Thread(target=engine.close, kwargs={"grace_s": 1.0})
        closer.start()
        for stream in streams:
            with pytest.raises(EngineError, match="the engine was closed"):
                async for _ in stream:
                    pass
        with pytest.raises(EngineError, match="the engine was closed"):
            await preparing
        await asyncio.to_thread(closer.join, 60)
        assert not closer.is_alive()  # the grace, then the kill: it returned
        release.set()

    asyncio.run(asyncio.wait_for(close_mid_stream(), 90))
    assert set(psutil.Process().children(recursive=True)) - children_before == set()
    assert our_rings() == rings_before


def test_close_during_a_restart_leaves_no_worker_behind(checkpoints) -> None:
    resource_tracker.ensure_running()
    children_before, rings_before = set(psutil.Process().children(recursive=True)), our_rings()
    engine = Engine(engine_config(checkpoints["base"], "mp", "uni"))
    talker = engine.router.stages["talker"]
    first = talker.pid
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: talker.pid not in (None, first), what="the replacement")  # starting now
    engine.close(grace_s=5.0)
    assert set(psutil.Process().children(recursive=True)) - children_before == set()
    assert our_rings() == rings_before
    assert not [t for t in threading.enumerate() if t.name == "talker-restart" and t.is_alive()]


def test_talker_sizes_left_out_of_the_config_come_from_the_memory_plan(checkpoints) -> None:
    config = EngineConfig(model=str(checkpoints["base"]))  # as `app.py --model` builds it
    with Engine(config) as engine:
        plan = engine.memory
        assert (engine.config.talker.max_num_seqs, engine.config.talker.max_model_len) == (8, 4096)  # tiny: the most
        assert (plan.max_num_seqs, plan.max_model_len) == (8, 4096)
        assert engine.router.places == 8 + config.limits.max_waiting
        assert plan.describe().startswith("memory plan (cpu, float32)")
    too_big = dataclasses.replace(config, memory=MemoryConfig(kv_cache_gb=0.01), talker=StageConfig(max_num_seqs=8))
    with pytest.raises(ConfigError, match="talker.max_num_seqs 8 x talker.max_model_len 4096 need a .* KV cache"):
        Engine(too_big)  # refused before any weight is loaded


@pytest.mark.parametrize("executors", ["uni", "mp"])
def test_a_new_clip_s_reference_is_decoded_as_soon_as_its_prompt_is_ready(
    executors: str, request: pytest.FixtureRequest, clips, tmp_path: Path
) -> None:
    """Not when the first chunk comes: the prompt's reference codes go to code2wav as a warm-up, decoded while the
    talker prefills."""
    engine: Engine = request.getfixturevalue(executors)
    samples, rate = sf.read(clips["mono"])
    fresh = tmp_path / "cold.wav"  # a clip no other test of this engine clones
    sf.write(fresh, samples * (0.7 if executors == "uni" else 0.8), rate)
    engine.probe.timeline()  # drop the events of earlier tests
    engine.synthesize(clone(clips, frames=3, ref_audio=fresh.read_bytes()))
    ref_frames = engine.prep.encode(fresh.read_bytes(), True).ref_codes.shape[0]  # cached by the request
    decodes = engine.probe.timeline().select(name=ev.CODE2WAV_DECODE)
    assert [e.args["frames"] for e in decodes if e.args.get("warming")] == [ref_frames]


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
    engine.probe.timeline()  # drop the events of earlier tests
    voice = engine.prepare_voice(clip).result(timeout=60)
    assert voice.icl and voice.ref_text is None  # the transcript comes with each request
    ref_frames = voice.ref_codes.shape[0]
    deadline, warmed = time.monotonic() + 60, []
    while not warmed:  # code2wav decodes the reference codes in the background
        assert time.monotonic() < deadline, "the prefix was never warmed"
        warmed = [e for e in engine.probe.timeline().select(name=ev.CODE2WAV_DECODE) if e.args.get("warming")]
    assert warmed[0].args["frames"] == ref_frames
    hits, misses = engine.prep.voices.hits, engine.prep.voices.misses
    engine.synthesize(clone(clips, frames=3, ref_audio=clip))
    assert (engine.prep.voices.hits, engine.prep.voices.misses) == (hits + 1, misses)
    decoded = [e.args["frames"] for e in engine.probe.timeline().select(name=ev.CODE2WAV_DECODE)]
    assert ref_frames not in decoded and sum(decoded) == 3  # only the request's own three frames
    with pytest.raises(RequestError) as refused:
        engine.prepare_voice(b"not audio").result(timeout=60)
    assert refused.value.field == "ref_audio"
