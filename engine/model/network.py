"""The module tree of a checkpoint's `model.safetensors`: the talker and, for Base checkpoints, the speaker encoder.

Its state-dict names are the official ones (`talker.*`, `speaker_encoder.*`), so released weights load strictly.
"""

from __future__ import annotations

from torch import nn

from engine.model.config import Qwen3TTSConfig
from engine.model.speaker_encoder import SpeakerEncoder
from engine.model.talker import Talker


class Qwen3TTSNetwork(nn.Module):
    def __init__(self, config: Qwen3TTSConfig) -> None:
        super().__init__()
        self.config = config
        self.talker = Talker(config.talker_config)
        # only Base checkpoints clone voices, and only they ship the ECAPA weights
        self.speaker_encoder = (
            SpeakerEncoder(config.speaker_encoder_config) if config.tts_model_type == "base" else None
        )
