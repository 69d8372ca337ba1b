"""Log-mel front end of the speaker encoder, as the official `mel_spectrogram` computes it.

24 kHz audio, 1024-point STFT with a periodic Hann window and hop 256, no centering but a reflect pad of
(n_fft - hop) / 2 = 384 samples each side, magnitude sqrt(re^2 + im^2 + 1e-9), 128 Slaney-normalised mel bands over
0-12 kHz (librosa's filterbank, as the official uses), natural log clamped at 1e-5. The operations and their order
follow the official code so that the frames are bit-identical on the same device.
"""

from __future__ import annotations

from functools import lru_cache

import librosa
import torch
import torch.nn.functional as F

SAMPLE_RATE = 24000
N_FFT = 1024
WIN_LENGTH = 1024
HOP_LENGTH = 256
N_MELS = 128
FMIN = 0.0
FMAX = 12000.0
PAD = (N_FFT - HOP_LENGTH) // 2  # 384: frames are centred on hops without torch.stft's own centering
LOG_FLOOR = 1e-5
MAGNITUDE_EPS = 1e-9


@lru_cache(maxsize=16)
def _mel_basis(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) filterbank; built in float32 as the official does, then cast."""
    basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX)
    return torch.from_numpy(basis).float().to(device=device, dtype=dtype)


@lru_cache(maxsize=16)
def _hann_window(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.hann_window(WIN_LENGTH).to(device=device, dtype=dtype)


def num_mel_frames(num_samples: int) -> int:
    """Frames `log_mel_spectrogram` gives for a waveform of `num_samples` samples (one per hop)."""
    return (num_samples + 2 * PAD - N_FFT) // HOP_LENGTH + 1


def log_mel_spectrogram(audio: torch.Tensor) -> torch.Tensor:
    """(B, N) or (N,) waveform at 24 kHz -> (B, n_mels, frames) log-mel, in float32 (float64 stays float64).

    Needs N > 384 samples (the reflect pad). Values outside [-1, 1] are used as they are (the official only warns).
    """
    if audio.ndim == 1:
        audio = audio.unsqueeze(0)
    if audio.ndim != 2:
        raise ValueError(f"audio must be (N,) or (B, N), got shape {tuple(audio.shape)}")
    if audio.shape[-1] <= PAD:
        raise ValueError(f"audio has {audio.shape[-1]} samples; the mel front end needs more than {PAD}")
    dtype = torch.float64 if audio.dtype == torch.float64 else torch.float32
    audio = audio.to(dtype)
    padded = F.pad(audio.unsqueeze(1), (PAD, PAD), mode="reflect").squeeze(1)
    spec = torch.stft(
        padded,
        N_FFT,
        hop_length=HOP_LENGTH,
        win_length=WIN_LENGTH,
        window=_hann_window(audio.device, dtype),
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    magnitude = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + MAGNITUDE_EPS)
    mel = torch.matmul(_mel_basis(audio.device, dtype), magnitude)
    return torch.log(torch.clamp(mel, min=LOG_FLOOR))
