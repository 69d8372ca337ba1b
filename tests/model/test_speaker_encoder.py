"""The speaker encoder (ECAPA-TDNN) and its log-mel front end.

Bit-level parity with the official `mel_spectrogram` / `Qwen3TTSSpeakerEncoder` is checked against the official
package in tests/parity; here: the official key layout, the frame arithmetic, a few official mel values, and the
behaviour a caller relies on (shapes, determinism, batching, refusing too-short audio).
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.model.config import SpeakerEncoderConfig
from engine.model.mel import N_MELS, log_mel_spectrogram, num_mel_frames
from engine.model.speaker_encoder import SpeakerEncoder, extract_xvector

SMALL = SpeakerEncoderConfig(
    enc_dim=64, enc_channels=[32, 32, 32, 32, 96], enc_attention_channels=16, enc_se_channels=16
)

# official `speaker_encoder.*` shapes for SMALL (prefix stripped), res2net sub-blocks listed separately below
OFFICIAL_SHAPES = {
    "blocks.0.conv.weight": (32, 128, 5),
    "blocks.0.conv.bias": (32,),
    **{
        f"blocks.{i}.{name}": shape
        for i in (1, 2, 3)
        for name, shape in {
            "tdnn1.conv.weight": (32, 32, 1),
            "tdnn1.conv.bias": (32,),
            "tdnn2.conv.weight": (32, 32, 1),
            "tdnn2.conv.bias": (32,),
            "se_block.conv1.weight": (16, 32, 1),
            "se_block.conv1.bias": (16,),
            "se_block.conv2.weight": (32, 16, 1),
            "se_block.conv2.bias": (32,),
            **{f"res2net_block.blocks.{j}.conv.weight": (4, 4, 3) for j in range(7)},
            **{f"res2net_block.blocks.{j}.conv.bias": (4,) for j in range(7)},
        }.items()
    },
    "mfa.conv.weight": (96, 96, 1),
    "mfa.conv.bias": (96,),
    "asp.tdnn.conv.weight": (16, 288, 1),
    "asp.tdnn.conv.bias": (16,),
    "asp.conv.weight": (96, 16, 1),
    "asp.conv.bias": (96,),
    "fc.weight": (64, 192, 1),
    "fc.bias": (64,),
}


def tone(num_samples: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(num_samples) / 24000
    freqs = 100 + 3000 * torch.rand(4, 1, generator=g)
    return 0.2 * torch.sin(2 * math.pi * freqs * t).sum(0) + 0.01 * torch.randn(num_samples, generator=g)


@pytest.fixture(scope="module")
def encoder() -> SpeakerEncoder:
    torch.manual_seed(0)
    model = SpeakerEncoder(SMALL).eval()
    with torch.no_grad():  # default init leaves biases small; spread them so every path matters
        for p in model.parameters():
            if p.ndim == 1:
                p.normal_(0, 0.1)
    return model


def test_state_dict_has_the_official_keys_and_shapes(encoder: SpeakerEncoder) -> None:
    assert {k: tuple(v.shape) for k, v in encoder.state_dict().items()} == OFFICIAL_SHAPES


@pytest.mark.parametrize("enc_dim, official_count", [(1024, 8_854_336), (2048, 12_001_088)])  # 0.6B / 1.7B Base
def test_released_configs_have_the_official_parameter_count(enc_dim: int, official_count: int) -> None:
    model = SpeakerEncoder(SpeakerEncoderConfig(enc_dim=enc_dim))
    assert sum(p.numel() for p in model.parameters()) == official_count


@pytest.mark.parametrize("num_samples", [1280, 4800, 24000, 24000 + 255, 24000 + 256])
def test_mel_gives_one_frame_per_hop(num_samples: int) -> None:
    mel = log_mel_spectrogram(tone(num_samples))
    assert mel.shape == (1, N_MELS, num_mel_frames(num_samples))
    assert num_mel_frames(num_samples) == num_samples // 256


def test_mel_matches_official_values() -> None:
    t = torch.arange(4800) / 24000
    audio = 0.5 * torch.sin(2 * math.pi * 440 * t) + 0.1 * torch.sin(2 * math.pi * 3000 * t)
    mel = log_mel_spectrogram(audio)[0]
    # (band, frame) -> value from the official mel_spectrogram on the same signal
    official = {(0, 0): -1.132803, (9, 3): -5.874811, (10, 7): -5.359528, (40, 10): -9.962391, (127, 17): -7.170567}
    peak = mel.max().item()
    for (band, frame), value in official.items():
        # float32 FFT rounding is relative to the loudest bin, so a bin e^k below it carries e^k times the error, and
        # how it rounds depends on the CPU's kernels (band 40 sits 11 nats down: 7e-4 apart on one CPU, 0 on another)
        tolerance = 1e-5 + torch.finfo(torch.float32).eps * math.exp(peak - value)
        assert mel[band, frame].item() == pytest.approx(value, abs=tolerance)
    assert (mel[:, 1:].argmax(0) == 16).all()  # 440 Hz falls in mel band 16


def test_mel_of_a_batch_equals_the_mel_of_each_row() -> None:
    batch = torch.stack([tone(6000, seed) for seed in range(3)])
    mel = log_mel_spectrogram(batch)
    for i in range(3):
        torch.testing.assert_close(mel[i], log_mel_spectrogram(batch[i])[0])


def test_xvector_shape_and_determinism(encoder: SpeakerEncoder) -> None:
    audio = tone(24000)
    xvec = extract_xvector(encoder, audio)
    assert xvec.shape == (SMALL.enc_dim,) and xvec.dtype == torch.float32
    assert torch.equal(xvec, extract_xvector(encoder, audio.clone()))


def test_xvector_depends_on_the_voice_not_on_the_length(encoder: SpeakerEncoder) -> None:
    long = tone(48000, seed=1)
    other = extract_xvector(encoder, tone(48000, seed=2))
    first, second = extract_xvector(encoder, long[:24000]), extract_xvector(encoder, long[24000:])
    # pooled statistics: two halves of one signal agree far better than a different signal
    assert (first - second).norm() < 0.5 * (first - other).norm()


def test_equal_length_batch_matches_single_items(encoder: SpeakerEncoder) -> None:
    mels = torch.stack([log_mel_spectrogram(tone(12000, seed))[0].T for seed in range(3)])
    with torch.inference_mode():
        batched = encoder(mels)
        for i in range(3):
            torch.testing.assert_close(batched[i], encoder(mels[i : i + 1])[0], rtol=1e-5, atol=1e-5)


def test_shortest_accepted_audio_and_too_short_audio(encoder: SpeakerEncoder) -> None:
    assert encoder.min_frames == 5  # the dilation-4 Res2Net convolution pads 4 frames each side
    assert extract_xvector(encoder, tone(5 * 256)).isfinite().all()
    with pytest.raises(ValueError, match="needs at least 5 mel frames"):
        extract_xvector(encoder, tone(5 * 256 - 1))


def test_xvector_in_bfloat16_follows_the_encoder_dtype(encoder: SpeakerEncoder) -> None:
    audio = tone(24000)
    half = SpeakerEncoder(SMALL).eval()
    half.load_state_dict(encoder.state_dict())
    half.to(torch.bfloat16)
    xvec = extract_xvector(half, audio)
    assert xvec.dtype == torch.bfloat16
    torch.testing.assert_close(xvec.float(), extract_xvector(encoder, audio), rtol=0.1, atol=0.1)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
