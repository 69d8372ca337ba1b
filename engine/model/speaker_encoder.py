"""The speaker encoder: an ECAPA-TDNN that maps 24 kHz reference audio to an x-vector.

Base checkpoints carry it as `speaker_encoder.*`; the x-vector fills the speaker slot of the talker's prefill (in both
x-vector-only and ICL voice cloning). Module and attribute names follow the official code, so the state-dict keys
(`blocks.*`, `mfa.*`, `asp.*`, `fc.*`) load with `strict=True` once the `speaker_encoder.` prefix is stripped.
Every convolution uses 'same' padding with reflected edges, so utterances are pooled without zero padding; a batch
therefore holds equal-length utterances only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.config import SpeakerEncoderConfig
from engine.model.mel import log_mel_spectrogram, num_mel_frames

STATS_EPS = 1e-12


def _same_conv(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> nn.Conv1d:
    return nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, padding="same", padding_mode="reflect")


class TimeDelayNetBlock(nn.Module):
    """Dilated 1-D convolution + ReLU (a TDNN layer)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.conv = _same_conv(in_channels, out_channels, kernel_size, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class Res2NetBlock(nn.Module):
    """Splits channels into `scale` groups; group i > 0 is a TDNN of (group i + output of group i-1)."""

    def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.scale = scale
        width = channels // scale
        self.blocks = nn.ModuleList(TimeDelayNetBlock(width, width, kernel_size, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.chunk(x, self.scale, dim=1)
        outputs = [groups[0]]
        y = None
        for block, group in zip(self.blocks, groups[1:], strict=True):
            y = block(group if y is None else group + y)
            outputs.append(y)
        return torch.cat(outputs, dim=1)


class SqueezeExcitationBlock(nn.Module):
    """Channel gates from the time-averaged features."""

    def __init__(self, channels: int, se_channels: int) -> None:
        super().__init__()
        self.conv1 = _same_conv(channels, se_channels)
        self.conv2 = _same_conv(se_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(x.mean(dim=2, keepdim=True)))))
        return x * gate


class SqueezeExcitationRes2NetBlock(nn.Module):
    """TDNN -> Res2Net -> TDNN -> squeeze-excitation, with a residual connection."""

    def __init__(
        self, in_channels: int, out_channels: int, scale: int, se_channels: int, kernel_size: int, dilation: int
    ) -> None:
        super().__init__()
        self.tdnn1 = TimeDelayNetBlock(in_channels, out_channels, 1, 1)
        self.res2net_block = Res2NetBlock(out_channels, scale, kernel_size, dilation)
        self.tdnn2 = TimeDelayNetBlock(out_channels, out_channels, 1, 1)
        self.se_block = SqueezeExcitationBlock(out_channels, se_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x)))) + x


def _weighted_stats(x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over time of x (B, C, T) under weights that sum to 1 over T."""
    mean = (weights * x).sum(dim=2)
    var = (weights * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2)
    return mean, torch.sqrt(var.clamp(STATS_EPS))


class AttentiveStatisticsPooling(nn.Module):
    """Attention over time, conditioned on the utterance's global mean and std; returns (B, 2C, 1) [mean; std]."""

    def __init__(self, channels: int, attention_channels: int) -> None:
        super().__init__()
        self.tdnn = TimeDelayNetBlock(channels * 3, attention_channels, 1, 1)
        self.conv = _same_conv(attention_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, frames = x.shape
        # uniform weights formed as the official does (ones / their sum), so the global stats round the same way
        ones = x.new_ones(batch, 1, frames)
        mean, std = _weighted_stats(x, ones / ones.sum(dim=2, keepdim=True))
        context = torch.cat([x, mean.unsqueeze(2).expand_as(x), std.unsqueeze(2).expand_as(x)], dim=1)
        attention = torch.softmax(self.conv(torch.tanh(self.tdnn(context))), dim=2)
        mean, std = _weighted_stats(x, attention)
        return torch.cat([mean, std], dim=1).unsqueeze(2)


class SpeakerEncoder(nn.Module):
    """ECAPA-TDNN over log-mel frames: (B, T, mel_dim) -> (B, enc_dim)."""

    def __init__(self, config: SpeakerEncoderConfig) -> None:
        super().__init__()
        channels, kernels, dilations = config.enc_channels, config.enc_kernel_sizes, config.enc_dilations
        if not len(channels) == len(kernels) == len(dilations):
            raise ValueError("enc_channels, enc_kernel_sizes and enc_dilations must have the same length")
        self.blocks = nn.ModuleList([TimeDelayNetBlock(config.mel_dim, channels[0], kernels[0], dilations[0])])
        for i in range(1, len(channels) - 1):
            self.blocks.append(
                SqueezeExcitationRes2NetBlock(
                    channels[i - 1],
                    channels[i],
                    config.enc_res2net_scale,
                    config.enc_se_channels,
                    kernels[i],
                    dilations[i],
                )
            )
        # multi-layer feature aggregation of the SE-Res2Net outputs
        self.mfa = TimeDelayNetBlock(channels[-1], channels[-1], kernels[-1], dilations[-1])
        self.asp = AttentiveStatisticsPooling(channels[-1], config.enc_attention_channels)
        self.fc = _same_conv(channels[-1] * 2, config.enc_dim)
        # reflect padding needs more frames than the widest one-sided pad of any convolution
        self.min_frames = max(d * (k - 1) - d * (k - 1) // 2 for k, d in zip(kernels, dilations, strict=True)) + 1

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        x = mels.transpose(1, 2)
        hidden = []
        for block in self.blocks:
            x = block(x)
            hidden.append(x)
        x = self.mfa(torch.cat(hidden[1:], dim=1))
        return self.fc(self.asp(x)).squeeze(-1)


@torch.inference_mode()
def extract_xvector(encoder: SpeakerEncoder, audio: torch.Tensor) -> torch.Tensor:
    """1-D 24 kHz mono waveform -> x-vector (enc_dim,), as the official `extract_speaker_embedding`.

    The mel is computed in float32 on the audio's device (the official computes it on the CPU), then cast to the
    encoder's device and dtype.
    """
    if audio.ndim != 1:
        raise ValueError(f"audio must be a 1-D waveform, got shape {tuple(audio.shape)}")
    if num_mel_frames(audio.numel()) < encoder.min_frames:
        raise ValueError(
            f"audio has {audio.numel()} samples; the speaker encoder needs at least {encoder.min_frames} mel frames"
        )
    weight = encoder.fc.weight
    mels = log_mel_spectrogram(audio).transpose(1, 2)
    return encoder(mels.to(device=weight.device, dtype=weight.dtype))[0]
