"""The released configs build our network with the official parameter counts (on the meta device: no memory)."""

from __future__ import annotations

import json

import pytest
import torch

from engine.model.codec import SpeechTokenizer
from engine.model.config import Qwen3TTSConfig, SpeechTokenizerConfig
from engine.model.loading import Qwen3TTSNetwork
from engine.model.tiny import RELEASE_CONFIGS


def count(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


@pytest.mark.parametrize(
    ("name", "millions"),
    [("0.6B-Base", 914.6), ("1.7B-Base", 1928.7)],
)
def test_base_checkpoints_have_the_official_parameter_count(name: str, millions: float) -> None:
    config = Qwen3TTSConfig.from_file(RELEASE_CONFIGS / f"Qwen3-TTS-12Hz-{name}.json")
    with torch.device("meta"):
        network = Qwen3TTSNetwork(config)
    assert count(network) == pytest.approx(millions, abs=0.05)


@pytest.mark.parametrize("name", ["0.6B-CustomVoice", "1.7B-CustomVoice", "1.7B-VoiceDesign"])
def test_other_checkpoints_build_without_a_speaker_encoder(name: str) -> None:
    config = Qwen3TTSConfig.from_file(RELEASE_CONFIGS / f"Qwen3-TTS-12Hz-{name}.json")
    with torch.device("meta"):
        network = Qwen3TTSNetwork(config)
    assert network.speaker_encoder is None
    base = "0.6B" if name.startswith("0.6B") else "1.7B"
    with torch.device("meta"):
        base_network = Qwen3TTSNetwork(Qwen3TTSConfig.from_file(RELEASE_CONFIGS / f"Qwen3-TTS-12Hz-{base}-Base.json"))
    assert count(network) == pytest.approx(count(base_network) - count(base_network.speaker_encoder), abs=0.05)


def test_speech_tokenizer_has_the_official_weight_count() -> None:
    raw = json.loads((RELEASE_CONFIGS / "Qwen3-TTS-Tokenizer-12Hz.json").read_text())
    with torch.device("meta"):
        tokenizer = SpeechTokenizer(SpeechTokenizerConfig.from_dict(raw))

    def weights(module: torch.nn.Module) -> int:  # codebooks are parameters upstream and buffers here: count both
        return sum(t.numel() for t in module.state_dict().values())

    # counted on the official Qwen3TTSTokenizerV2Model built from the same config
    assert weights(tokenizer.decoder) == 114_323_137
    assert weights(tokenizer.encoder) == 56_234_304
