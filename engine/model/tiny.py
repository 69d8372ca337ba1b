"""Build a small random checkpoint in the official layout: `python -m engine.model.tiny OUT --task base`.

Tests, benchmarks and the app's default model use it, because real weights cannot be downloaded everywhere. The
configs are the released ones with smaller widths and depths; the vocabularies, special ids, speakers, languages and
the codec's rates are real, so every code path (prompt layout, stopping, decoding) is the one a real model takes.
Weights are seeded and scaled ~1/sqrt(fan_in) so logits have clear margins (greedy codes are stable across
implementations) and the audio is not constant; `--eos-boost` scales the EOS row of the codec head so that
generation stops on its own after a few frames.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from engine.model.codec import SpeechTokenizer
from engine.model.config import Qwen3TTSConfig, SpeechTokenizerConfig
from engine.model.loading import Qwen3TTSNetwork
from engine.model.vocab import write_tokenizer_files

RELEASE_CONFIGS = Path(__file__).parent / "release_configs"
TEMPLATES = {
    "base": "Qwen3-TTS-12Hz-0.6B-Base.json",
    "custom_voice": "Qwen3-TTS-12Hz-1.7B-CustomVoice.json",  # 1.7B: its instruct is used, not dropped
    "voice_design": "Qwen3-TTS-12Hz-1.7B-VoiceDesign.json",
}


@dataclass(frozen=True)
class ModelSize:
    """Overrides of the released configs; `None` keeps the released value (the real sizes)."""

    talker: dict
    code_predictor: dict
    speaker_encoder: dict | None
    codec_decoder: dict | None
    codec_encoder: dict | None


SIZES = {
    "tiny": ModelSize(
        talker=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            text_hidden_size=48,
            rope_scaling={"interleaved": True, "mrope_section": [6, 5, 5], "rope_type": "default"},
        ),
        code_predictor=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
        ),
        speaker_encoder=dict(
            enc_dim=64, enc_channels=[32, 32, 32, 32, 96], enc_attention_channels=16, enc_se_channels=16
        ),
        codec_decoder=dict(
            latent_dim=32,
            codebook_dim=32,
            decoder_dim=32,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=16,
            vector_quantization_hidden_dimension=32,
        ),
        codec_encoder=dict(
            num_filters=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=8,
            intermediate_size=64,
            codebook_dim=16,
            vector_quantization_hidden_dimension=16,
            upsample_groups=32,
        ),
    ),
    "mid": ModelSize(
        talker=dict(
            hidden_size=512,
            intermediate_size=1536,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=64,
            text_hidden_size=512,
            rope_scaling={"interleaved": True, "mrope_section": [12, 10, 10], "rope_type": "default"},
        ),
        code_predictor=dict(
            hidden_size=512,
            intermediate_size=1536,
            num_hidden_layers=5,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=64,
        ),
        speaker_encoder=None,
        codec_decoder=None,
        codec_encoder=None,
    ),
}


def make_configs(task: str, size: str) -> tuple[dict, dict]:
    """The raw config.json and speech_tokenizer/config.json of a random checkpoint."""
    if task not in TEMPLATES:
        raise ValueError(f"task must be one of {sorted(TEMPLATES)}, got {task!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    spec = SIZES[size]
    config = json.loads((RELEASE_CONFIGS / TEMPLATES[task]).read_text())
    config["talker_config"].update(copy.deepcopy(spec.talker))
    config["talker_config"]["code_predictor_config"].update(spec.code_predictor)
    if task == "base" and spec.speaker_encoder:
        config["speaker_encoder_config"].update(spec.speaker_encoder)
    if task == "base":
        config["speaker_encoder_config"]["enc_dim"] = config["talker_config"]["hidden_size"]
    codec = json.loads((RELEASE_CONFIGS / "Qwen3-TTS-Tokenizer-12Hz.json").read_text())
    codec["decoder_config"].update(spec.codec_decoder or {})
    codec["encoder_config"].update(spec.codec_encoder or {})
    return config, codec


def randomize_(module: nn.Module, generator: torch.Generator) -> None:
    """Give every weight a seeded, non-degenerate value (HF-style init leaves codebooks, gammas and Snake at 0)."""

    def normal_(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=generator) * std + mean)

    done: set[str] = set()
    with torch.no_grad():
        for prefix, mod in module.named_modules():
            w = getattr(mod, "weight", None)
            if not isinstance(w, torch.Tensor) or w.dim() < 2:
                continue
            if isinstance(mod, nn.Embedding):
                normal_(w, 1.0)
            elif isinstance(mod, nn.ConvTranspose1d):
                normal_(w, 1.0 / math.sqrt(w.shape[0] * w.shape[2] / mod.stride[0]))
            else:  # Linear, Conv1d: fan_in = in_channels * kernel
                normal_(w, 1.0 / math.sqrt(w[0].numel()))
            done.add(f"{prefix}.weight" if prefix else "weight")
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if name in done or not t.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "cluster_usage":
                t.copy_(torch.rand(t.shape, generator=generator) * 1.5 + 0.5)
            elif leaf == "initialized":
                t.fill_(1.0)
            elif leaf in ("alpha", "beta"):  # SnakeBeta, log-scale; larger values make fp32 round-off audible
                normal_(t, 0.2)
            elif leaf in ("scale", "gamma"):  # LayerScale, ConvNeXt
                t.copy_(torch.rand(t.shape, generator=generator) * 0.4 + 0.1)
            elif leaf == "bias":
                normal_(t, 0.02)
            elif t.dim() == 1:  # norm weights
                normal_(t, 0.1, mean=1.0)
            else:
                normal_(t, 1.0 / math.sqrt(t[0].numel()))
        # a codebook is embedding_sum / cluster_usage: scale the sums so the codebooks themselves are ~N(0, 1)
        tensors = dict(module.named_parameters()) | dict(module.named_buffers())
        for name, t in tensors.items():
            if name.endswith(("embed_sum", "embedding_sum")):
                usage = tensors[name.rsplit(".", 1)[0] + ".cluster_usage"]
                t.copy_(torch.randn(t.shape, generator=generator) * usage[:, None])


def condition_codec_(codec: SpeechTokenizer) -> None:
    """Damp the waveform decoder: with raw 1/sqrt(fan_in) convs it saturates at the final clamp, and fp32 round-off
    grows to ~3e-5 through it; this keeps the audio at std ~0.15, unclipped, with fp32 within ~3e-6 of fp64."""
    with torch.no_grad():
        convs = [m for m in codec.decoder.decoder.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]
        for conv in convs:
            conv.weight.mul_(0.7)
        convs[-1].weight.mul_(0.05 / 0.7)


def _save(module: nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})


def build_checkpoint(
    out: str | Path, task: str = "base", size: str = "tiny", seed: int = 0, eos_boost: float = 1.0
) -> Path:
    """Write a complete random checkpoint folder and return its path."""
    out = Path(out)
    (out / "speech_tokenizer").mkdir(parents=True, exist_ok=True)
    raw, raw_codec = make_configs(task, size)
    generator = torch.Generator().manual_seed(seed)

    network = Qwen3TTSNetwork(Qwen3TTSConfig.from_dict(raw))
    randomize_(network, generator)
    if eos_boost != 1.0:
        with torch.no_grad():
            network.talker.codec_head.weight[raw["talker_config"]["codec_eos_token_id"]] *= eos_boost
    codec = SpeechTokenizer(SpeechTokenizerConfig.from_dict(raw_codec))
    randomize_(codec, generator)
    condition_codec_(codec)

    (out / "config.json").write_text(json.dumps(raw, indent=2))
    (out / "generation_config.json").write_text((RELEASE_CONFIGS / "generation_config.json").read_text())
    _save(network, out / "model.safetensors")
    (out / "speech_tokenizer" / "config.json").write_text(json.dumps(raw_codec, indent=2))
    (out / "speech_tokenizer" / "preprocessor_config.json").write_text(
        (RELEASE_CONFIGS / "speech_tokenizer.preprocessor_config.json").read_text()
    )
    _save(codec, out / "speech_tokenizer" / "model.safetensors")
    write_tokenizer_files(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the checkpoint into")
    parser.add_argument("--task", choices=sorted(TEMPLATES), default="base")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eos-boost", type=float, default=1.0, help="scale of the EOS logit row; 8 stops early")
    args = parser.parse_args()
    path = build_checkpoint(args.out, args.task, args.size, args.seed, args.eos_boost)
    print(f"wrote a {args.size} {args.task} checkpoint to {path}")


if __name__ == "__main__":
    main()
