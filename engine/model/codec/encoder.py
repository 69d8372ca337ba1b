"""The speech tokenizer's encoder: 24 kHz audio -> 12.5 Hz frames of 16 codes.

The official encoder is transformers' `MimiModel` with its decoder half set to None. Here only the encoder half is
built, from the same transformers modules and under the same names (`encoder`, `encoder_transformer`, `downsample`,
`quantizer`), so the checkpoint's `encoder.*` keys load strictly and the codes are the official ones. The quantizer
holds all 32 Mimi codebooks (they are in the checkpoint) but only the first `valid_num_quantizers` are computed:
residual quantization is sequential, so they equal the first codes of the full 32-code encoding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers import MimiConfig
from transformers.models.mimi.modeling_mimi import (
    MimiConv1d,
    MimiEncoder,
    MimiSplitResidualVectorQuantizer,
    MimiTransformerModel,
)


class SpeechEncoder(nn.Module):
    def __init__(self, encoder_config: dict[str, Any], valid_num_quantizers: int = 16, downsample_rate: int = 1920):
        super().__init__()
        cfg = MimiConfig(**encoder_config, attn_implementation="sdpa")
        if cfg.frame_rate == cfg.encodec_frame_rate:
            raise ValueError("the 12 Hz tokenizer's Mimi encoder downsamples its frames; frame_rate must differ")
        self.valid_num_quantizers = valid_num_quantizers
        self.downsample_rate = downsample_rate
        self.encoder = MimiEncoder(cfg)
        self.encoder_transformer = MimiTransformerModel(cfg)
        # built as MimiModel builds it (replicate padding, stride 2)
        self.downsample = MimiConv1d(
            cfg,
            cfg.hidden_size,
            cfg.hidden_size,
            kernel_size=2 * int(cfg.encodec_frame_rate / cfg.frame_rate),
            stride=2,
            bias=False,
            pad_mode="replicate",
            layer_idx=len(self.encoder._mimiconv1d_layer_names),
        )
        self.quantizer = MimiSplitResidualVectorQuantizer(cfg)

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (samples,) float at 24 kHz -> codes (ceil(samples / 1920), valid_num_quantizers) int64.

        One mono clip, unpadded: what the official `EncodecFeatureExtractor` makes of a single clip (it pads only
        to the longest clip of a batch, and its padding mask then only trims the codes to ceil(samples / 1920))."""
        x = audio.reshape(1, 1, -1).to(self.downsample.conv.weight.dtype)
        h = self.encoder(x)
        h = self.encoder_transformer(h.transpose(1, 2), return_dict=True).last_hidden_state
        h = self.downsample(h.transpose(1, 2))
        codes = self.quantizer.encode(h, self.valid_num_quantizers)  # (Q, 1, frames)
        return codes[:, 0, : math.ceil(audio.shape[-1] / self.downsample_rate)].transpose(0, 1)
