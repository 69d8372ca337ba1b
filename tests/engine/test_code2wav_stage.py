"""The Code2Wav stage on the tiny checkpoint: streamed chunks equal one-shot decoding, ICL prefixes warm the state
and the audio starts at the official cut wherever the stream can know it, chunks of several requests decode in one
batch, and a bad chunk or a cancel touches only its own request."""

from __future__ import annotations

import pytest
import torch

from engine.config import StageConfig
from engine.model.codec import Code2Wav
from engine.model.prompt import icl_trim_start
from engine.model.qwen3_tts import Qwen3TTS, VoicePrompt
from engine.stages.code2wav import Code2WavStage
from engine.stages.messages import AudioOut, Cancel, CodeChunk, Credit, Failed, WarmPrefix
from telemetry import events

SAMPLES_PER_FRAME = 1920
ATOL = 1e-6  # float64 decoder, float32 output: only the final rounding differs


@pytest.fixture(scope="module")
def model(checkpoints) -> Qwen3TTS:
    # float64: in fp32 the tiny decoder's round-off alone moves samples by ~1e-5 between chunkings (fp32 vs fp64
    # of one decode differ by ~2e-5), which would hide a real streaming error of that size
    return Qwen3TTS.from_pretrained(checkpoints["base"], dtype=torch.float64)


@pytest.fixture(scope="module")
def decoder(model: Qwen3TTS) -> Code2Wav:
    return model.speech_tokenizer.decoder


def make_stage(
    decoder: Code2Wav, max_num_seqs: int = 4, prefix_cache_size: int = 16
) -> tuple[Code2WavStage, events.Recorder]:
    recorder = events.Recorder("test")
    stage = Code2WavStage(decoder, StageConfig(max_num_seqs=max_num_seqs), recorder, prefix_cache_size)
    return stage, recorder


def random_codes(frames: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 2048, (frames, 16), generator=torch.Generator().manual_seed(seed))


def one_shot(decoder: Code2Wav, codes: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return decoder.decode(codes[None])[0].float()


def chunks(rid: str, codes: torch.Tensor, sizes: list[int], prefix: torch.Tensor | None = None) -> list[CodeChunk]:
    """Split `codes` by `sizes` (their sum must be the frame count); a trailing 0 gives an empty last chunk."""
    assert sum(sizes) == codes.shape[0]
    out, start = [], 0
    for i, n in enumerate(sizes):
        first_prefix = prefix if i == 0 else None
        out.append(CodeChunk(rid, i, codes[start : start + n], i == len(sizes) - 1, first_prefix))
        start += n
    return out


def held(stage: Code2WavStage) -> list[str]:
    """The requests whose decoder state the stage keeps (a warm-up of a voice is no request)."""
    return [rid for rid, req in stage._requests.items() if not req.warm_only]


def run(stage: Code2WavStage) -> list:
    out = []
    while stage.has_work():
        out += stage.step()
    return out


def joined(outputs: list, rid: str) -> torch.Tensor:
    mine = [o for o in outputs if isinstance(o, AudioOut) and o.request_id == rid]
    assert [o.index for o in mine] == list(range(len(mine)))
    assert mine[-1].is_last and not any(o.is_last for o in mine[:-1])
    return torch.cat([o.samples for o in mine])


@pytest.mark.parametrize("sizes", [[2, 8, 8, 8, 5], [1, 3, 3, 3], [2, 8, 0], [31]])
def test_streamed_audio_equals_one_shot_decoding(decoder: Code2Wav, sizes: list[int]) -> None:
    codes = random_codes(sum(sizes), seed=1)
    stage, _ = make_stage(decoder)
    for chunk in chunks("a", codes, sizes):
        stage.submit(chunk)
    outputs = run(stage)
    assert [o.frames for o in outputs] == sizes
    assert all(o.samples.dtype == torch.float32 and o.samples.device.type == "cpu" for o in outputs)
    assert all(o.samples.shape == (o.frames * SAMPLES_PER_FRAME,) for o in outputs)
    torch.testing.assert_close(joined(outputs, "a"), one_shot(decoder, codes), atol=ATOL, rtol=0)
    assert held(stage) == []  # the last chunk freed the request's state


# (15, 7), (15, 11), (17, 6), (17, 11), (17, 12), (17, 14): the official cut falls one sample before the boundary
@pytest.mark.parametrize("ref_frames, prefix_cache_size", [(15, 16), (17, 0)])  # warmed states cached, or not
def test_icl_audio_starts_at_the_official_cut_whenever_the_stream_knows_its_total(
    model: Qwen3TTS, decoder: Code2Wav, ref_frames: int, prefix_cache_size: int
) -> None:
    """A sweep of output lengths against `icl_trim_start` (the one-shot path's official cut): a request whose first
    chunk is its last gets the official audio exactly; a longer stream, whose total is unknown at its first sample,
    starts at the frame boundary, which is the official cut or one sample after it."""
    ref, codes = random_codes(ref_frames, seed=ref_frames), random_codes(14, seed=20)
    voice = VoicePrompt(x_vector=torch.zeros(1), ref_codes=ref)  # decode reads only the ref codes
    stage, _ = make_stage(decoder, prefix_cache_size=prefix_cache_size)
    early = []
    for frames in range(1, 15):
        total = ref_frames + frames
        official = torch.from_numpy(model.decode(codes[:frames], voice))
        extra = ref_frames * SAMPLES_PER_FRAME - icl_trim_start(ref_frames, total, total * SAMPLES_PER_FRAME)
        early += [frames] * extra
        for chunk in chunks("whole", codes[:frames], [frames], prefix=ref):
            stage.submit(chunk)
        whole = joined(run(stage), "whole")
        assert whole.shape == official.shape
        torch.testing.assert_close(whole, official, atol=ATOL, rtol=0)
        for chunk in chunks("streamed", codes[:frames], [1, frames - 1], prefix=ref):  # [1, 0]: an empty last chunk
            stage.submit(chunk)
        torch.testing.assert_close(joined(run(stage), "streamed"), official[extra:], atol=ATOL, rtol=0)
    assert early == {15: [7, 11], 17: [6, 11, 12, 14]}[ref_frames]  # the sweep holds both cuts


@pytest.mark.parametrize("frames", [7, 8])  # 15 ref + 7: the official cut is one sample early; 15 + 8: at the boundary
def test_icl_prefix_is_decoded_first_and_its_audio_dropped(model: Qwen3TTS, decoder: Code2Wav, frames: int) -> None:
    ref, codes = random_codes(15, seed=2), random_codes(frames, seed=3)
    stage, recorder = make_stage(decoder)
    for chunk in chunks("a", codes, [2, frames - 2], prefix=ref):
        stage.submit(chunk)
    streamed = joined(run(stage), "a")
    expected = one_shot(decoder, torch.cat([ref, codes]))[15 * SAMPLES_PER_FRAME :]
    torch.testing.assert_close(streamed, expected, atol=ATOL, rtol=0)

    # the reference path cuts int(ref / total * samples): at most one sample earlier, then the same audio
    voice = VoicePrompt(x_vector=torch.zeros(1), ref_codes=ref)  # decode reads only the ref codes
    reference = torch.from_numpy(model.decode(codes, voice))
    extra = 15 * SAMPLES_PER_FRAME - icl_trim_start(15, 15 + frames, (15 + frames) * SAMPLES_PER_FRAME)
    assert extra == (1 if frames == 7 else 0)
    assert reference.shape[0] == streamed.shape[0] + extra
    torch.testing.assert_close(streamed, reference[extra:], atol=ATOL, rtol=0)

    # the same reference clip again: the warmed state comes from the cache, the prefix is not decoded again; in one
    # chunk, the request's total is known at its first sample, so its audio starts at the official cut
    for chunk in chunks("b", codes, [frames], prefix=ref):
        stage.submit(chunk)
    torch.testing.assert_close(joined(run(stage), "b"), reference, atol=ATOL, rtol=0)
    decoded = [e.args["frames"] for e in recorder.drain() if e.name == events.CODE2WAV_DECODE]
    assert decoded.count(15) == 1


def test_a_prefix_warmed_ahead_spares_the_first_request_its_decode(decoder: Code2Wav) -> None:
    ref, codes = random_codes(15, seed=4), random_codes(6, seed=5)
    stage, recorder = make_stage(decoder)
    stage.submit(WarmPrefix(ref))
    stage.submit(WarmPrefix(ref.clone()))  # the same voice again while queued: one decode
    stage.submit(WarmPrefix(random_codes(3, seed=6) + 5000))  # unfit codes: nothing to warm, nothing to answer
    assert held(stage) == []  # no request is held by a warm-up
    assert run(stage) == []  # and none is answered
    for chunk in chunks("a", codes, [2, 4], prefix=ref):
        stage.submit(chunk)
    expected = one_shot(decoder, torch.cat([ref, codes]))[15 * SAMPLES_PER_FRAME :]
    torch.testing.assert_close(joined(run(stage), "a"), expected, atol=ATOL, rtol=0)
    decodes = [e for e in recorder.drain() if e.name == events.CODE2WAV_DECODE]
    assert [e.args["frames"] for e in decodes] == [15, 2, 4]  # the prefix once, ahead of the request
    assert decodes[0].args["requests"] == [] and decodes[0].args["warming"] == 1


def test_a_request_and_its_voice_s_warm_up_queued_together_decode_the_prefix_once(decoder: Code2Wav) -> None:
    """The warm-up and the request's first chunk race (prompt prep sends both): the audio is that of the request
    alone either way, bit for bit, and the prefix is decoded once."""
    ref, codes = random_codes(20, seed=7), random_codes(4, seed=8)
    alone, _ = make_stage(decoder)
    for chunk in chunks("a", codes, [4], prefix=ref):
        alone.submit(chunk)
    expected = joined(run(alone), "a")

    stage, recorder = make_stage(decoder)
    stage.submit(WarmPrefix(ref))
    for chunk in chunks("a", codes, [4], prefix=ref):
        stage.submit(chunk)
    assert torch.equal(joined(run(stage), "a"), expected)
    decodes = [e for e in recorder.drain() if e.name == events.CODE2WAV_DECODE]
    assert [(e.args["frames"], e.args["batch_size"]) for e in decodes] == [(20, 1), (4, 1)]


def test_interleaved_requests_decode_in_shared_batches(decoder: Code2Wav) -> None:
    plans = {"a": [2, 8, 8, 3], "b": [2, 8, 8, 8], "c": [1, 8, 5], "d": [2, 4, 4, 4, 0], "e": [8, 8]}
    codes = {rid: random_codes(sum(sizes), seed=10 + i) for i, (rid, sizes) in enumerate(plans.items())}
    streams = {rid: chunks(rid, codes[rid], sizes) for rid, sizes in plans.items()}
    stage, recorder = make_stage(decoder, max_num_seqs=3)
    outputs = []
    for round_ in range(5):  # the talker emits one chunk per request per round; code2wav steps in between
        for rid in plans:
            if round_ < len(streams[rid]):
                stage.submit(streams[rid][round_])
        outputs += stage.step()
    outputs += run(stage)
    for rid in plans:
        torch.testing.assert_close(joined(outputs, rid), one_shot(decoder, codes[rid]), atol=ATOL, rtol=0)
    spans = [e for e in recorder.drain() if e.name == events.CODE2WAV_DECODE]
    sizes = [e.args["batch_size"] for e in spans]
    assert max(sizes) == 3 and all(1 <= s <= 3 for s in sizes)  # batches form, bounded by max_num_seqs
    assert all(len(set(e.args["requests"])) == e.args["batch_size"] for e in spans)  # one chunk per request
    assert held(stage) == []


def test_cancel_frees_the_request_and_ignores_its_late_chunks(decoder: Code2Wav) -> None:
    stage, _ = make_stage(decoder)
    a, b = chunks("a", random_codes(10, seed=4), [2, 8]), chunks("b", random_codes(4, seed=5), [2, 2])
    stage.submit(a[0])
    stage.submit(b[0])
    assert len(stage.step()) == 2 and sorted(held(stage)) == ["a", "b"]  # both hold decoder state
    stage.submit(Cancel("a"))
    stage.submit(a[1])  # emitted by the talker before it saw the cancel
    stage.submit(b[1])
    outputs = run(stage)
    assert [(o.request_id, o.index) for o in outputs] == [("b", 1)]
    assert held(stage) == [] and not stage.has_work()


def test_a_bad_chunk_fails_only_its_request(decoder: Code2Wav, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    stage, _ = make_stage(decoder)
    good = random_codes(10, seed=6)
    out_of_range = random_codes(2, seed=7)
    out_of_range[0, 3] = 2048
    stage.submit(CodeChunk("range", 0, out_of_range, False))
    stage.submit(CodeChunk("shape", 0, random_codes(2, seed=8)[:, :8], False))
    stage.submit(CodeChunk("order", 1, random_codes(2, seed=9), False))
    stage.submit(CodeChunk("float", 0, random_codes(2, seed=9).float(), True))
    stage.submit(CodeChunk("late_prefix", 0, random_codes(2, seed=9), False))
    stage.submit(CodeChunk("late_prefix", 1, random_codes(2, seed=9), True, prefix_codes=random_codes(3, seed=9)))
    # a failure inside the batched decode: the batch is retried row by row, and only the bad row fails
    poison = random_codes(2, seed=10)
    poison[:, 0] = 1234
    real_decode_chunk = decoder.decode_chunk

    def decode_chunk(codes, state):
        if (codes[:, :, 0] == 1234).all(dim=1).any():
            raise RuntimeError("poisoned")
        return real_decode_chunk(codes, state)

    monkeypatch.setattr(decoder, "decode_chunk", decode_chunk)
    for chunk in [*chunks("good", good, [2, 8]), CodeChunk("poison", 0, poison, False)]:
        stage.submit(chunk)
    stage.submit(CodeChunk("range", 1, random_codes(2, seed=11), True))  # late chunks of a failed request
    outputs = run(stage)
    failed = {o.request_id: o.message for o in outputs if isinstance(o, Failed)}
    assert sorted(failed) == ["float", "late_prefix", "order", "poison", "range", "shape"]
    assert "out of range" in failed["range"] and failed["poison"] == "code2wav: the decode failed"
    assert "request poison: code2wav: the decode failed" in caplog.text and "poisoned" in caplog.text  # the detail
    torch.testing.assert_close(joined(outputs, "good"), one_shot(decoder, good), atol=ATOL, rtol=0)
    assert held(stage) == []


def test_only_code_chunks_and_cancels_are_taken(decoder: Code2Wav) -> None:
    stage, _ = make_stage(decoder)
    with pytest.raises(TypeError, match="Credit"):
        stage.submit(Credit("a"))


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
