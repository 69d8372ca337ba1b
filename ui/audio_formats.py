"""Audio on the wire: float32 PCM from the engine encoded as a whole file (wav, pcm, flac) or as a stream.

Every format carries 16-bit samples, as the OpenAI speech API does (its `pcm` is raw s16le at 24 kHz). A streaming WAV
starts with a header whose RIFF and data sizes are 0xFFFFFFFF ("unknown length", as streaming servers send it), so a
player can start on the first chunk; the PCM chunks that follow are the same bytes as the `pcm` stream.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile as sf

FORMATS = ("wav", "pcm", "flac")
STREAM_FORMATS = ("wav", "pcm")  # a FLAC stream would need a seekable header: not offered
CONTENT_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac"}
UNKNOWN_SIZE = 0xFFFFFFFF
SAMPLE_BYTES = 2  # s16le


def to_pcm16(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> little-endian int16 bytes (clipped: a peak above 1 must not wrap around)."""
    scaled = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0
    return np.rint(scaled).astype("<i2").tobytes()


def encode(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """The whole waveform as one file in `fmt` (wav and flac: 16-bit mono; pcm: raw s16le, no header)."""
    if fmt == "pcm":
        return to_pcm16(samples)
    if fmt not in FORMATS:
        raise ValueError(f"unknown audio format {fmt!r}; expected one of {FORMATS}")
    buf = io.BytesIO()  # written from our int16 samples, so a file holds exactly the bytes of the pcm stream
    pcm = np.frombuffer(to_pcm16(samples), dtype="<i2")
    sf.write(buf, pcm, sample_rate, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()


def wav_stream_header(sample_rate: int, channels: int = 1) -> bytes:
    """A 44-byte PCM-16 WAV header with unknown RIFF and data sizes, for a stream whose length is not known yet."""
    block_align = channels * SAMPLE_BYTES
    return (
        b"RIFF"
        + struct.pack("<I", UNKNOWN_SIZE)
        + b"WAVEfmt "
        + struct.pack(
            "<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block_align, block_align, 8 * SAMPLE_BYTES
        )
        + b"data"
        + struct.pack("<I", UNKNOWN_SIZE)
    )
