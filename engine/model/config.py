"""Checkpoint configs as typed dataclasses, parsed from the official config.json files.

Field names follow the official `qwen-tts` configs so that a reader can match them key by key; unknown keys in a
checkpoint's JSON are ignored (the release carries HF bookkeeping keys), but a missing required section is an error.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASK_TYPES = ("base", "custom_voice", "voice_design")


def _take(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    """The keys of `raw` that name a field of the dataclass `cls`."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in raw.items() if k in names}


@dataclass
class CodePredictorConfig:
    vocab_size: int = 2048
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 5
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    num_code_groups: int = 32

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CodePredictorConfig:
        return cls(**_take(cls, raw))


@dataclass
class TalkerConfig:
    vocab_size: int = 3072
    hidden_size: int = 1024
    intermediate_size: int = 2048
    num_hidden_layers: int = 20
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    head_dim: int = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    num_code_groups: int = 32
    text_vocab_size: int = 151936
    text_hidden_size: int = 2048
    codec_eos_token_id: int = 4198
    codec_think_id: int = 4202
    codec_nothink_id: int = 4203
    codec_think_bos_id: int = 4204
    codec_think_eos_id: int = 4205
    codec_pad_id: int = 4196
    codec_bos_id: int = 4197
    spk_id: dict[str, int] = field(default_factory=dict)
    spk_is_dialect: dict[str, str | bool] = field(default_factory=dict)
    codec_language_id: dict[str, int] = field(default_factory=dict)
    code_predictor_config: CodePredictorConfig = field(default_factory=CodePredictorConfig)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TalkerConfig:
        kw = _take(cls, raw)
        kw["code_predictor_config"] = CodePredictorConfig.from_dict(raw.get("code_predictor_config") or {})
        return cls(**kw)


@dataclass
class SpeakerEncoderConfig:
    mel_dim: int = 128
    enc_dim: int = 1024
    enc_channels: list[int] = field(default_factory=lambda: [512, 512, 512, 512, 1536])
    enc_kernel_sizes: list[int] = field(default_factory=lambda: [5, 3, 3, 3, 1])
    enc_dilations: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 1])
    enc_attention_channels: int = 128
    enc_res2net_scale: int = 8
    enc_se_channels: int = 128
    sample_rate: int = 24000

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SpeakerEncoderConfig:
        return cls(**_take(cls, raw))


@dataclass
class Qwen3TTSConfig:
    """The top-level `config.json` of a Qwen3-TTS checkpoint."""

    talker_config: TalkerConfig
    speaker_encoder_config: SpeakerEncoderConfig
    tokenizer_type: str
    tts_model_size: str
    tts_model_type: str
    im_start_token_id: int = 151644
    im_end_token_id: int = 151645
    tts_pad_token_id: int = 151671
    tts_bos_token_id: int = 151672
    tts_eos_token_id: int = 151673
    assistant_token_id: int = 77091

    def __post_init__(self) -> None:
        if self.tts_model_type not in TASK_TYPES:
            raise ValueError(f"tts_model_type must be one of {TASK_TYPES}, got {self.tts_model_type!r}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Qwen3TTSConfig:
        if raw.get("model_type") != "qwen3_tts":
            raise ValueError(f"config.json has model_type {raw.get('model_type')!r}; expected 'qwen3_tts'")
        kw = _take(cls, raw)
        kw["talker_config"] = TalkerConfig.from_dict(raw.get("talker_config") or {})
        kw["speaker_encoder_config"] = SpeakerEncoderConfig.from_dict(raw.get("speaker_encoder_config") or {})
        return cls(**kw)

    @classmethod
    def from_file(cls, path: str | Path) -> Qwen3TTSConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class CodecDecoderConfig:
    """`decoder_config` of the 12 Hz speech tokenizer: the causal Code2Wav network."""

    latent_dim: int = 1024
    codebook_dim: int = 512
    codebook_size: int = 2048
    decoder_dim: int = 1536
    hidden_size: int = 512
    intermediate_size: int = 1024
    hidden_act: str = "silu"
    num_hidden_layers: int = 8
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    head_dim: int = 64
    rms_norm_eps: float = 1e-5
    layer_scale_initial_scale: float = 0.01
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8000
    sliding_window: int = 72
    num_quantizers: int = 16
    num_semantic_quantizers: int = 1
    semantic_codebook_size: int = 4096
    upsample_rates: list[int] = field(default_factory=lambda: [8, 5, 4, 3])
    upsampling_ratios: list[int] = field(default_factory=lambda: [2, 2])
    vector_quantization_hidden_dimension: int = 512
    attention_bias: bool = False

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CodecDecoderConfig:
        return cls(**_take(cls, raw))


@dataclass
class SpeechTokenizerConfig:
    """`speech_tokenizer/config.json`. The encoder is HF's Mimi, so its config stays a dict for `MimiConfig`."""

    decoder_config: CodecDecoderConfig
    encoder_config: dict[str, Any]
    encoder_valid_num_quantizers: int = 16
    input_sample_rate: int = 24000
    output_sample_rate: int = 24000
    decode_upsample_rate: int = 1920
    encode_downsample_rate: int = 1920

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SpeechTokenizerConfig:
        if raw.get("model_type") != "qwen3_tts_tokenizer_12hz":
            raise ValueError(
                f"speech_tokenizer/config.json has model_type {raw.get('model_type')!r}; "
                "expected 'qwen3_tts_tokenizer_12hz'"
            )
        kw = _take(cls, raw)
        kw["decoder_config"] = CodecDecoderConfig.from_dict(raw.get("decoder_config") or {})
        kw["encoder_config"] = dict(raw.get("encoder_config") or {})
        return cls(**kw)

    @classmethod
    def from_file(cls, path: str | Path) -> SpeechTokenizerConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
