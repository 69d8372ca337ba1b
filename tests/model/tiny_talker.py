"""A tiny random talker for unit tests: the tiny builder's custom-voice config (`engine.model.tiny.SIZES["tiny"]` on
the released one: real codec vocabulary, special ids and speakers, small widths) with a 200-id text vocab."""

from __future__ import annotations

import torch

from engine.model.config import Qwen3TTSConfig
from engine.model.talker import Talker
from engine.model.tiny import make_configs, randomize_

TTS_PAD, TTS_BOS, TTS_EOS = 197, 198, 199  # text special ids remapped into the small text vocabulary


def tiny_config(tts_model_size: str = "1b7", predictor_hidden: int = 32) -> Qwen3TTSConfig:
    raw, _ = make_configs("custom_voice", "tiny")
    raw.update(tts_model_size=tts_model_size, tts_pad_token_id=TTS_PAD, tts_bos_token_id=TTS_BOS,
               tts_eos_token_id=TTS_EOS)  # fmt: skip
    raw["talker_config"]["text_vocab_size"] = 200
    raw["talker_config"]["code_predictor_config"]["hidden_size"] = predictor_hidden
    return Qwen3TTSConfig.from_dict(raw)


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
