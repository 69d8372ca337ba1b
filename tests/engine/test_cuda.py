"""The engine on a GPU, in float32 and bfloat16, with both executors, CUDA graphs on and off, and batch-invariant
steps: what a CUDA deployment relies on.

Skipped without CUDA. `VOXTRACE_TEST_DEVICE=cpu` runs the same tests on the CPU (a check of the tests themselves; the
sync count needs a GPU and stays skipped).

Tolerances. In float32 the stream must carry the reference path's codes: decoding one frame with one code changed
moves samples by more than 0.1 on the tiny model, while decoding the same codes chunk by chunk instead of in one go
changes them only by float rounding (other kernel shapes; well under 1e-3). So `atol=1e-3` on the waveform means "the
same codes". In bfloat16 the rounding of the batched, masked decode step differs from the reference loop's, so codes
may part ways: the stream must finish, with the requested length, finite samples in [-1, 1] and not silence.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import Engine, EngineConfig, SpeechRequest
from engine.config import ChunkingConfig, DecodeConfig, LimitsConfig, StageConfig
from engine.model.audio import load_reference_audio
from engine.model.qwen3_tts import Qwen3TTS, SynthesisInput
from engine.model.sampling import SamplingParams, Warp, choose_tokens, warp_logits
from engine.prep import PromptPrep
from engine.stages.code2wav import Code2WavStage
from engine.stages.messages import CodeChunk
from engine.stages.talker import TalkerStage
from telemetry import events

DEVICE = os.environ.get("VOXTRACE_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")

GREEDY = SamplingParams(do_sample=False, subtalker_dosample=False)
FRAMES = 20
EXECUTORS = [("uni", "uni"), ("mp", "mp")]


def cuda_engine(
    checkpoint: Path, dtype: str, talker: str, code2wav: str, talker_seqs: int = 8, code2wav_seqs: int = 4, **decode
) -> Engine:
    """`decode`: the `DecodeConfig` keys this engine sets (the rest at their defaults)."""
    return Engine(
        EngineConfig(
            model=str(checkpoint),
            device=DEVICE,
            dtype=dtype,
            talker=StageConfig(executor=talker, max_num_seqs=talker_seqs),
            code2wav=StageConfig(executor=code2wav, max_num_seqs=code2wav_seqs),
            decode=DecodeConfig(**decode),
        )
    )


def clone(clips: dict[str, Path], seed: int | None = None, frames: int = FRAMES, **kw) -> SpeechRequest:
    """An ICL voice-clone request of `frames` frames: greedy, or sampled with the release's settings and `seed`."""
    fields = dict(
        text="Streaming speech, chunk by chunk.",
        language="English",
        ref_audio=clips["mono"].read_bytes(),
        ref_text="This is the reference clip.",
        sampling=GREEDY if seed is None else None,
        seed=seed,
        max_new_tokens=frames + 1,
    )
    return SpeechRequest(**(fields | kw))


def stream_together(engine: Engine, requests: list[SpeechRequest]) -> list[np.ndarray]:
    """Each request's waveform, all sent at once so that they share the talker's decode steps."""

    async def one(request: SpeechRequest) -> np.ndarray:
        return np.concatenate([chunk.samples async for chunk in engine.generate(request)])

    async def run() -> list[np.ndarray]:
        return await asyncio.gather(*(one(r) for r in requests))

    return asyncio.run(run())


@pytest.fixture(scope="module")
def reference(checkpoints: dict[str, Path]) -> dict[str, Qwen3TTS]:
    """The reference path (one request, one-shot decoding) on the GPU, per dtype."""
    return {
        dtype: Qwen3TTS.from_pretrained(checkpoints["base"], device=DEVICE, dtype=getattr(torch, dtype))
        for dtype in ("float32", "bfloat16")
    }


def reference_wav(model: Qwen3TTS, request: SpeechRequest) -> np.ndarray:
    clip = load_reference_audio(request.ref_audio, max_seconds=30)
    voice = model.create_voice_prompt(clip, request.ref_text)
    params = dataclasses.replace(request.sampling or model.sampling_defaults, max_new_tokens=request.max_new_tokens)
    inp = SynthesisInput(text=request.text, language=request.language, voice=voice)
    wav = model.synthesize(inp, params, seed=request.seed).wav
    return wav[len(wav) % 1920 :]  # the official ICL cut may keep one extra sample; the stream cuts at ref * 1920


@pytest.mark.parametrize("talker,code2wav", EXECUTORS)
@pytest.mark.parametrize("seed", [None, 5], ids=["greedy", "seeded"])
def test_float32_stream_carries_the_reference_codes(talker, code2wav, seed, checkpoints, clips, reference) -> None:
    request = clone(clips, seed)
    with cuda_engine(checkpoints["base"], "float32", talker, code2wav, sampling_mode="official") as engine:
        synthesis = engine.synthesize(request)
    expected = reference_wav(reference["float32"], request)
    assert [c.frames for c in synthesis.chunks] == [2, 2, 4, 8, 4]
    assert synthesis.wav.dtype == np.float32 and synthesis.wav.shape == expected.shape
    np.testing.assert_allclose(synthesis.wav, expected, rtol=0, atol=1e-3)


@pytest.mark.parametrize("talker,code2wav", EXECUTORS)
@pytest.mark.parametrize("x_vector_only", [False, True], ids=["icl", "xvector"])
def test_bfloat16_stream_finishes_with_sane_audio(talker, code2wav, x_vector_only, checkpoints, clips) -> None:
    request = clone(clips, seed=3, x_vector_only=x_vector_only)
    with cuda_engine(checkpoints["base"], "bfloat16", talker, code2wav) as engine:
        assert engine.model.dtype == torch.bfloat16
        synthesis = engine.synthesize(request)
    assert [c.index for c in synthesis.chunks] == list(range(len(synthesis.chunks)))
    assert synthesis.chunks[-1].is_last and sum(c.frames for c in synthesis.chunks) == FRAMES
    wav = synthesis.wav
    assert wav.dtype == np.float32 and wav.shape == (FRAMES * 1920,)  # the random model never draws EOS
    assert np.isfinite(wav).all() and np.abs(wav).max() <= 1.0
    assert np.sqrt(np.mean(wav**2)) > 1e-4  # not silence


def test_seeded_draws_repeat_and_equal_the_official_seeding() -> None:
    scores = torch.randn(2, 2048, device=DEVICE)
    warp = Warp.of([0.9, 0.9], [50, 50], [1.0, 1.0], device=DEVICE)

    def draw(seed_a: int, seed_b: int, steps: int = 5) -> list[list[int]]:
        gens = [torch.Generator(DEVICE).manual_seed(seed_a), torch.Generator(DEVICE).manual_seed(seed_b)]
        return [choose_tokens(scores, warp, [True, True], gens).tolist() for _ in range(steps)]

    first = draw(1, 2)
    torch.manual_seed(99)
    assert draw(1, 2) == first
    # the official seeds with torch.manual_seed, which seeds the device's default generator: same draws
    torch.manual_seed(1)
    probs = warp_logits(scores[:1], Warp.of([0.9], [50], [1.0], device=DEVICE)).softmax(-1)
    assert [row[0] for row in first] == [torch.multinomial(probs, 1).item() for _ in range(5)]
    if DEVICE == "cuda":  # why each row's generator lives on the device: torch refuses a CPU one for GPU scores
        with pytest.raises(RuntimeError):
            choose_tokens(scores, warp, [True, True], [torch.Generator(), torch.Generator()])


@pytest.mark.parametrize("talker,code2wav", EXECUTORS)
def test_a_seeded_request_repeats_on_the_gpu(talker, code2wav, checkpoints, clips) -> None:
    with cuda_engine(checkpoints["base"], "bfloat16", talker, code2wav) as engine:
        first = engine.synthesize(clone(clips, seed=7)).wav
        again = engine.synthesize(clone(clips, seed=7)).wav
        other = engine.synthesize(clone(clips, seed=8)).wav
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def host_syncs(step) -> list[str]:
    """What `step()` did that made the host wait for the GPU (torch's sync debug mode names each one)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [str(w.message) for w in caught if "synchroniz" in str(w.message)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="counts CUDA syncs")
def test_a_talker_decode_step_reads_back_only_the_sampled_codes(reference, clips) -> None:
    model = reference["bfloat16"]
    job = PromptPrep(model, LimitsConfig(), 0).prepare(clone(clips, seed=1))
    stage = TalkerStage(
        model.talker, model.config, StageConfig(max_num_seqs=2, max_model_len=256), ChunkingConfig(2, 8),
        events.Recorder("test"),
    )  # fmt: skip
    stage.submit(job)
    stage.step()  # admission: prefill (copies the prompt to the device) and the first decode step
    syncs = host_syncs(stage.step)  # a decode step of the running batch: code 0, 15 predictor codes, the talker
    assert len(syncs) == 1, syncs  # frames.cpu(), the step's one read-back


@pytest.mark.skipif(not torch.cuda.is_available(), reason="counts CUDA syncs")
def test_a_code2wav_step_reads_back_only_the_audio(reference) -> None:
    stage = Code2WavStage(reference["bfloat16"].speech_tokenizer.decoder, StageConfig(), events.Recorder("test"))
    codes = torch.randint(0, 2048, (16, 16), generator=torch.Generator().manual_seed(0))
    stage.submit(CodeChunk("r", 0, codes[:8], is_last=False))
    stage.step()  # the first chunk (first use of each kernel)
    stage.submit(CodeChunk("r", 1, codes[8:], is_last=True))
    syncs = host_syncs(stage.step)
    assert len(syncs) == 1, syncs  # audio.cpu()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_graphs_replay_the_greedy_codes_of_the_eager_step(dtype, checkpoints, clips) -> None:
    """Three greedy requests of different lengths at once: the step runs at batch buckets 4 (one padding row), 2 and
    1 as they finish, each a graph replay with `cuda_graphs` (on CPU both runs are eager). Code2Wav decodes one chunk
    at a time, so equal codes give equal audio whatever the timing."""
    batch = [clone(clips, frames=frames, text=f"Sentence {frames}, streamed.") for frames in (FRAMES, 12, 6)]
    wavs = {}
    for graphs in (True, False):
        with cuda_engine(checkpoints["base"], dtype, "uni", "uni", code2wav_seqs=1, cuda_graphs=graphs) as engine:
            wavs[graphs] = stream_together(engine, batch)
    for on, off, request in zip(wavs[True], wavs[False], batch, strict=True):
        assert on.shape == ((request.max_new_tokens - 1) * 1920,)
        np.testing.assert_allclose(on, off, rtol=0, atol=1e-3)  # the same codes (see the module's docstring)


def test_a_seeded_request_is_the_same_alone_and_inside_a_batch_of_16(checkpoints, clips) -> None:
    """`batch_invariant` runs every step at one shape, and `fast` sampling keys each draw by (seed, step, code
    position): a seeded request's samples do not depend on what runs beside it, here 15 requests of other texts,
    seeds and lengths (4 to 32 frames), in bfloat16 with CUDA graphs, Code2Wav batching them too."""
    target = clone(clips, seed=11)
    others = [clone(clips, seed=100 + i, frames=4 + 2 * i, text=f"Another sentence, number {i}.") for i in range(15)]
    with cuda_engine(
        checkpoints["base"], "bfloat16", "uni", "uni", talker_seqs=16, sampling_mode="fast", batch_invariant=True
    ) as engine:
        (alone,) = stream_together(engine, [target])
        together = stream_together(engine, [*others[:8], target, *others[8:]])
    assert alone.shape == (FRAMES * 1920,) and np.abs(alone).max() > 0
    assert np.array_equal(together[8], alone)
