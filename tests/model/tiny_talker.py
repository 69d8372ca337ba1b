"""A tiny random talker for unit tests: real codec vocabulary and special ids, small widths, a 200-id text vocab."""

from __future__ import annotations

import torch

from engine.model.config import CodePredictorConfig, Qwen3TTSConfig, SpeakerEncoderConfig, TalkerConfig
from engine.model.talker import Talker
from engine.model.tiny import randomize_

TTS_PAD, TTS_BOS, TTS_EOS = 197, 198, 199  # text special ids remapped into the small text vocabulary


def tiny_config(tts_model_size: str = "1b7", predictor_hidden: int = 32) -> Qwen3TTSConfig:
    predictor = CodePredictorConfig(
        hidden_size=predictor_hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=1e6,
        num_code_groups=16,
    )
    talker = TalkerConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        rope_theta=1e6,
        rope_scaling={"interleaved": True, "mrope_section": [6, 5, 5]},
        num_code_groups=16,
        text_vocab_size=200,
        text_hidden_size=48,
        codec_eos_token_id=2150,
        codec_think_id=2154,
        codec_nothink_id=2155,
        codec_think_bos_id=2156,
        codec_think_eos_id=2157,
        codec_pad_id=2148,
        codec_bos_id=2149,
        spk_id={"serena": 3066, "eric": 2875, "dylan": 2878},
        spk_is_dialect={"serena": False, "eric": "sichuan_dialect", "dylan": "beijing_dialect"},
        codec_language_id={"chinese": 2055, "english": 2050, "sichuan_dialect": 2062, "beijing_dialect": 2074},
        code_predictor_config=predictor,
    )
    return Qwen3TTSConfig(
        talker,
        SpeakerEncoderConfig(),
        "qwen3_tts_tokenizer_12hz",
        tts_model_size,
        "custom_voice",
        tts_pad_token_id=TTS_PAD,
        tts_bos_token_id=TTS_BOS,
        tts_eos_token_id=TTS_EOS,
    )


def tiny_talker(seed: int = 0, eos_scale: float = 1.0, cfg: Qwen3TTSConfig | None = None) -> Talker:
    """The tiny builder's seeded weights (clear logit margins); eos_scale > 1 makes EOS likely."""
    cfg = cfg or tiny_config()
    talker = Talker(cfg.talker_config).eval()
    randomize_(talker, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        talker.codec_head.weight[cfg.talker_config.codec_eos_token_id] *= eos_scale
    return talker


def text_ids(n: int, seed: int = 0) -> torch.Tensor:
    """`<|im_start|>assistant\\n{n ids}<|im_end|>\\n<|im_start|>assistant\\n` with made-up small ids."""
    body = torch.randint(10, 190, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    return torch.tensor([[1, 2, 3, *body, 4, 3, 1, 2, 3]])


def wrapped_ids(n: int, seed: int = 0) -> torch.Tensor:
    """`<|im_start|>role\\n{n ids}<|im_end|>\\n` (reference text or instruct)."""
    body = torch.randint(10, 190, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    return torch.tensor([[1, 5, 3, *body, 4, 3]])
