"""Reference audio at the engine's edge: decode, downmix, validate and resample to the model's 24 kHz.

The official `Qwen3TTSModel` reads a file (path, URL or base64) with soundfile as float32 (integer PCM scaled to
[-1, 1) by libsndfile), averages the channels, and resamples with `librosa.resample` (soxr, "HQ" quality, then padded
or trimmed to ceil(n * 24000 / sr) samples) before both the speaker encoder and the codec encoder; it applies no gain
or peak normalisation. We do the same, bit for bit, with `soxr` directly. For a waveform given as an array, integer
samples are scaled to [-1, 1) as the official Gradio demo does (the official `(array, sr)` API would only cast them,
so int16 PCM would reach the mel 32768x too loud); floats are kept as they are, as that API does (the demo would also
divide floats peaking above 1 by their peak and clip). Unlike the official code, bad input is refused here with a
ValueError that names the problem.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

MODEL_SAMPLE_RATE = 24000
MAX_CHANNELS = 8
SILENCE_PEAK = 1.0 / 32768  # below one 16-bit step: digital silence, no voice to clone
DEFAULT_MIN_SECONDS = 0.1  # the speaker encoder needs a few mel frames (53 ms with the released config)


@dataclass(frozen=True)
class ReferenceAudio:
    """A validated reference clip, ready for the speaker encoder and the codec encoder."""

    samples: np.ndarray  # (n,) float32, mono, MODEL_SAMPLE_RATE
    orig_sample_rate: int
    duration: float  # seconds


def decode_audio(source: bytes | BinaryIO) -> tuple[np.ndarray, int]:
    """Audio file bytes or a binary file object (wav, flac, ogg, mp3: libsndfile) -> (float32 (n, ch), sr)."""
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        samples, sample_rate = sf.read(stream, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, TypeError) as exc:
        # libsndfile's own words name the file object; the cause stays chained for the log
        raise ValueError("reference audio is not a readable audio file (wav/flac/ogg/mp3)") from exc
    return samples, int(sample_rate)


def to_float32(samples: np.ndarray) -> np.ndarray:
    """Integer PCM -> float32 in [-1, 1) (signed: / 2^(bits-1); unsigned: centred); floats are cast, not rescaled."""
    samples = np.asarray(samples)
    if np.issubdtype(samples.dtype, np.floating):
        return samples.astype(np.float32)
    if np.issubdtype(samples.dtype, np.signedinteger):
        info = np.iinfo(samples.dtype)
        return samples.astype(np.float32) / max(abs(info.min), info.max)
    if np.issubdtype(samples.dtype, np.unsignedinteger):
        mid = (np.iinfo(samples.dtype).max + 1) / 2.0
        return ((samples.astype(np.float32) - mid) / mid).astype(np.float32)
    raise ValueError(f"reference audio has sample type {samples.dtype}; expected integer PCM or float")


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) -> (n,) float32: the average of the channels, as the official does."""
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    if samples.ndim != 2 or samples.shape[1] > MAX_CHANNELS:
        raise ValueError(
            f"reference audio has shape {samples.shape}; expected (samples,) or (samples, channels) "
            f"with at most {MAX_CHANNELS} channels"
        )
    return np.mean(samples, axis=-1).astype(np.float32)


def resample(samples: np.ndarray, orig_sample_rate: int, target_sample_rate: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling equal to `librosa.resample` (res_type soxr_hq): soxr HQ, then fixed to ceil length."""
    if orig_sample_rate == target_sample_rate:
        return samples
    out = soxr.resample(samples, orig_sample_rate, target_sample_rate, quality="HQ")
    length = math.ceil(samples.shape[-1] * (float(target_sample_rate) / orig_sample_rate))
    if out.shape[-1] >= length:
        return np.ascontiguousarray(out[:length], dtype=samples.dtype)
    return np.pad(out, (0, length - out.shape[-1])).astype(samples.dtype, copy=False)


def prepare_reference_audio(
    samples: np.ndarray,
    sample_rate: int,
    *,
    max_seconds: float,
    min_seconds: float = DEFAULT_MIN_SECONDS,
) -> ReferenceAudio:
    """A waveform (n,) or (n, channels) at `sample_rate` -> validated mono float32 at 24 kHz."""
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"reference audio sample rate must be a positive integer, got {sample_rate}")
    sample_rate = int(sample_rate)
    mono = to_mono(to_float32(samples))
    if mono.size == 0:
        raise ValueError("reference audio is empty")
    if not np.isfinite(mono).all():
        raise ValueError("reference audio contains NaN or infinite samples")
    duration = mono.size / sample_rate
    if duration > max_seconds:
        raise ValueError(f"reference audio is too long: {duration:.2f} s, the limit is {max_seconds:g} s")
    if duration < min_seconds:
        raise ValueError(f"reference audio is too short: {duration:.3f} s, the minimum is {min_seconds:g} s")
    peak = float(np.abs(mono).max())
    if peak < SILENCE_PEAK:
        raise ValueError(f"reference audio is silent (peak amplitude {peak:.2e})")
    return ReferenceAudio(resample(mono, sample_rate), sample_rate, duration)


def load_reference_audio(
    source: bytes | BinaryIO, *, max_seconds: float, min_seconds: float = DEFAULT_MIN_SECONDS
) -> ReferenceAudio:
    """Audio file bytes or file object -> validated mono float32 at 24 kHz (the official file path, with checks)."""
    samples, sample_rate = decode_audio(source)
    return prepare_reference_audio(samples, sample_rate, max_seconds=max_seconds, min_seconds=min_seconds)
