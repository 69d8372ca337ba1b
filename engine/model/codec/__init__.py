"""The 12 Hz speech tokenizer: `SpeechTokenizer` = encoder (audio -> codes) + Code2Wav decoder (codes -> audio).

A released `speech_tokenizer/model.safetensors` loads into `SpeechTokenizer` as it is (keys `encoder.*` and
`decoder.*`), with `load_state_dict(..., strict=True)`.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.model.codec.decoder import Code2Wav, DecoderState
from engine.model.codec.encoder import SpeechEncoder
from engine.model.config import SpeechTokenizerConfig

__all__ = ["Code2Wav", "DecoderState", "SpeechEncoder", "SpeechTokenizer"]


class SpeechTokenizer(nn.Module):
    def __init__(self, cfg: SpeechTokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = SpeechEncoder(cfg.encoder_config, cfg.encoder_valid_num_quantizers, cfg.encode_downsample_rate)
        self.decoder = Code2Wav(cfg.decoder_config)

    @torch.inference_mode()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (samples,) float at `input_sample_rate` -> codes (frames, 16) int64."""
        return self.encoder.encode(audio)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (frames, 16) -> audio (frames * decode_upsample_rate,) at `output_sample_rate`."""
        return self.decoder.decode(codes[None])[0]
