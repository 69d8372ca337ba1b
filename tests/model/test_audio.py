"""Reference audio handling: decode, downmix, resample to 24 kHz, and refuse what cannot be a voice to clone.

Equality with the official loading path (soundfile + channel mean + `librosa.resample`) is checked in tests/parity.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import soundfile as sf

from engine.model.audio import (
    MODEL_SAMPLE_RATE,
    load_reference_audio,
    prepare_reference_audio,
    resample,
    to_float32,
)


def tone(seconds: float, sample_rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode(samples: np.ndarray, sample_rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt, subtype", [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_24"), ("OGG", "VORBIS")])
def test_reads_audio_files_from_bytes(fmt: str, subtype: str) -> None:
    clip = tone(1.0, 24000)
    ref = load_reference_audio(encode(clip, 24000, fmt, subtype), max_seconds=30)
    assert ref.orig_sample_rate == 24000 and ref.duration == pytest.approx(1.0)
    assert ref.samples.dtype == np.float32 and ref.samples.shape == (24000,)
    lossy = subtype == "VORBIS"
    np.testing.assert_allclose(ref.samples, clip, atol=0.05 if lossy else 1e-4)


def test_reads_from_a_file_object() -> None:
    data = encode(tone(0.5, 24000), 24000)
    assert np.array_equal(
        load_reference_audio(io.BytesIO(data), max_seconds=30).samples,
        load_reference_audio(data, max_seconds=30).samples,
    )


def test_stereo_is_averaged_to_mono() -> None:
    left, right = tone(1.0, 24000, 440), tone(1.0, 24000, 660)
    ref = load_reference_audio(encode(np.stack([left, right], axis=1), 24000, subtype="FLOAT"), max_seconds=30)
    np.testing.assert_array_equal(ref.samples, (left + right) / 2)


def test_16k_is_resampled_to_24k_with_librosa_length() -> None:
    ref = load_reference_audio(encode(tone(2.0, 16000), 16000), max_seconds=30)
    assert ref.orig_sample_rate == 16000 and ref.duration == pytest.approx(2.0)
    assert ref.samples.shape == (48000,)
    # the tone survives: its spectrum peaks at 440 Hz
    spectrum = np.abs(np.fft.rfft(ref.samples))
    assert np.argmax(spectrum) * MODEL_SAMPLE_RATE / ref.samples.size == pytest.approx(440, abs=1)


@pytest.mark.parametrize("sample_rate, num_samples", [(44100, 44101), (22050, 1000), (8000, 8001), (48000, 7)])
def test_resampled_length_is_ceil_of_the_ratio(sample_rate: int, num_samples: int) -> None:
    out = resample(np.zeros(num_samples, np.float32), sample_rate)
    assert out.shape == (math.ceil(num_samples * 24000 / sample_rate),) and out.dtype == np.float32


def test_int16_arrays_are_scaled_like_soundfile() -> None:
    pcm = (tone(0.5, 24000) * 32767).astype(np.int16)
    from_array = prepare_reference_audio(pcm, 24000, max_seconds=30).samples
    from_file = load_reference_audio(encode(pcm, 24000, subtype="PCM_16"), max_seconds=30).samples
    np.testing.assert_array_equal(from_array, from_file)
    assert to_float32(np.array([-32768, 0, 16384], np.int16)).tolist() == [-1.0, 0.0, 0.5]
    assert to_float32(np.array([0, 128, 255], np.uint8)).tolist() == [-1.0, 0.0, 127 / 128]


@pytest.mark.parametrize(
    "samples, sample_rate, problem",
    [
        (np.zeros(0, np.float32), 24000, "empty"),
        (np.zeros(24000, np.float32), 24000, "silent"),
        (np.full(24000, 1e-6, np.float32), 24000, "silent"),
        (np.where(np.arange(24000) == 5, np.nan, 0.1).astype(np.float32), 24000, "NaN or infinite"),
        (np.where(np.arange(24000) == 5, np.inf, 0.1).astype(np.float32), 24000, "NaN or infinite"),
        (tone(11.0, 16000), 16000, "too long: 11.00 s, the limit is 10 s"),
        (tone(0.05, 24000), 24000, "too short"),
        (tone(1.0, 24000), 0, "sample rate"),
        (np.zeros((2, 24000), np.float32), 24000, r"\(samples, channels\)"),
        (np.array(["a", "b"]), 24000, "sample type"),
    ],
)
def test_bad_waveforms_are_refused_by_name(samples: np.ndarray, sample_rate: int, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        prepare_reference_audio(samples, sample_rate, max_seconds=10)


@pytest.mark.parametrize("data", [b"", b"not audio at all" * 100, b"RIFF\x00\x00\x00\x00WAVEfmt "])
def test_unreadable_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a readable audio file"):
        load_reference_audio(data, max_seconds=10)


def test_a_silent_file_is_refused() -> None:
    with pytest.raises(ValueError, match="silent"):
        load_reference_audio(encode(np.zeros(24000, np.float32), 24000), max_seconds=10)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
