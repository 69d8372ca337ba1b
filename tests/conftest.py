"""Shared fixtures: tiny random checkpoints in the official layout and synthetic reference clips.

Checkpoints are session-scoped because building one takes seconds (the real 151936-row text vocabulary), and
every model test reads them without writing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from engine.model.tiny import build_checkpoint

torch.set_num_threads(1)


def voice_like_clip(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """A harmonic tone with a gliding pitch and syllable-like bursts: speech-shaped, not silent, not noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 3.1 * t), 0, None) ** 0.5
    return (0.3 * tone * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoints for every task, plus a Base one whose EOS logit is boosted so generation stops early."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "base": build_checkpoint(root / "base", task="base", seed=1),
        "custom_voice": build_checkpoint(root / "custom_voice", task="custom_voice", seed=2),
        "voice_design": build_checkpoint(root / "voice_design", task="voice_design", seed=3),
        "base_eos": build_checkpoint(root / "base_eos", task="base", seed=4, eos_boost=8.0),
    }


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Reference clips as files: 24 kHz mono float, and 16 kHz stereo PCM-16 (resampled and downmixed on load)."""
    root = tmp_path_factory.mktemp("clips")
    mono = root / "ref_24k_mono.wav"
    sf.write(mono, voice_like_clip(3.0, 24000), 24000, subtype="FLOAT")
    stereo = root / "ref_16k_stereo.wav"
    left, right = voice_like_clip(2.5, 16000, seed=1), voice_like_clip(2.5, 16000, seed=2)
    sf.write(stereo, np.stack([left, right], axis=1), 16000, subtype="PCM_16")
    return {"mono": mono, "stereo": stereo}
