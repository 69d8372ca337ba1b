"""Finding and loading a checkpoint in the official layout, from a local folder or the Hub: its files, its module
trees (`Qwen3TTSNetwork`: the talker and, for Base checkpoints, the speaker encoder, under the official state-dict
names; the codec), and each part loaded strictly, so that a process loads only the part it runs.

The layout (as released): config.json, generation_config.json, model.safetensors (or shards with
model.safetensors.index.json), vocab.json + merges.txt, and speech_tokenizer/{config.json, model.safetensors,
preprocessor_config.json}. Every missing piece is reported by name, before any weight is read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from engine.model.codec import SpeechTokenizer
from engine.model.config import Qwen3TTSConfig, SpeechTokenizerConfig
from engine.model.speaker_encoder import SpeakerEncoder
from engine.model.talker import Talker

HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "speech_tokenizer/*"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing files, a wrong model type, or a Hub id that cannot be fetched."""


@dataclass
class CheckpointFiles:
    root: Path
    config: Qwen3TTSConfig
    generation_config: dict
    weights: list[Path]
    speech_tokenizer_config: SpeechTokenizerConfig
    speech_tokenizer_weights: list[Path]

    @property
    def has_text_vocab(self) -> bool:
        return (self.root / "vocab.json").is_file() and (self.root / "merges.txt").is_file()


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local folder as is; otherwise a Hub model id, downloaded (or taken from the Hub cache when offline)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; a checkpoint is a folder holding config.json")
        return path
    name = str(name_or_path)
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise CheckpointError(f"no checkpoint folder at {name!r}, and it is not a Hub model id (owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError as exc:
        raise CheckpointError(
            f"cannot download {name!r} from the Hub: no network connection, and it is not in the local Hub cache. "
            "Download it on a connected machine or pass a local checkpoint folder."
        ) from exc
    except HfHubHTTPError as exc:
        raise CheckpointError(f"the Hub refused {name!r}: {exc}") from exc


def _weight_files(folder: Path, what: str) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(f"{what}: shard(s) listed in {index.name} are missing: {', '.join(missing)}")
        return [folder / s for s in shards]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise CheckpointError(f"{what}: no model.safetensors (or model.safetensors.index.json) in {folder}")


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise CheckpointError(f"{what}: missing {path.name} in {path.parent}")
    return path


def find_checkpoint(name_or_path: str | os.PathLike) -> CheckpointFiles:
    """Locate every file of a checkpoint and parse its configs; raises `CheckpointError` naming what is wrong."""
    root = resolve_checkpoint(name_or_path)
    what = f"checkpoint {root}"
    try:
        config = Qwen3TTSConfig.from_file(_require(root / "config.json", what))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{what}: config.json is not a Qwen3-TTS config: {exc}") from exc
    if config.tokenizer_type != "qwen3_tts_tokenizer_12hz":
        raise CheckpointError(f"{what}: tokenizer_type {config.tokenizer_type!r} is not supported (only the 12 Hz one)")
    generation_config = json.loads(_require(root / "generation_config.json", what).read_text())
    st_dir = root / "speech_tokenizer"
    if not st_dir.is_dir():
        raise CheckpointError(f"{what}: missing the speech_tokenizer/ folder (the 12 Hz codec)")
    try:
        st_config = SpeechTokenizerConfig.from_file(_require(st_dir / "config.json", f"{what}/speech_tokenizer"))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{what}: speech_tokenizer/config.json: {exc}") from exc
    return CheckpointFiles(
        root=root,
        config=config,
        generation_config=generation_config,
        weights=_weight_files(root, what),
        speech_tokenizer_config=st_config,
        speech_tokenizer_weights=_weight_files(st_dir, f"{what}/speech_tokenizer"),
    )


def read_weights(files: list[Path], prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of one or more safetensors files whose names start with `prefix`, with the prefix stripped."""
    out: dict[str, torch.Tensor] = {}
    for f in files:
        for name, tensor in load_file(str(f)).items():
            if name.startswith(prefix):
                out[name[len(prefix) :]] = tensor
    return out


def load_module(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Strict load with an error that lists the first missing/unexpected names instead of a wall of text."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{what}: the weights do not fit the config: {str(exc)[:500]}") from exc
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} weights, e.g. {result.missing_keys[:3]}")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected weights, e.g. {result.unexpected_keys[:3]}")
    if problems:
        raise CheckpointError(f"{what}: the weights do not fit the config: {'; '.join(problems)}")


def cast_weights(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`module.to(dtype)`, except the RoPE frequency buffers (`inv_freq`, ours and transformers' Mimi ones), which
    stay float32 as in the official models loaded with a dtype: rounded to bfloat16 they put every angle off by up to
    2^-9 of itself (a radian at position 512 in the fastest channel), and the codes drift from the official ones."""
    keep = {name: buf for name, buf in module.named_buffers() if name.rpartition(".")[2] == "inv_freq"}
    module.to(dtype)
    for name, buf in keep.items():
        owner, _, attr = name.rpartition(".")
        module.get_submodule(owner).register_buffer(attr, buf, persistent=False)
    return module


class Qwen3TTSNetwork(nn.Module):
    def __init__(self, config: Qwen3TTSConfig) -> None:
        super().__init__()
        self.config = config
        self.talker = Talker(config.talker_config)
        # only Base checkpoints clone voices, and only they ship the ECAPA weights
        self.speaker_encoder = (
            SpeakerEncoder(config.speaker_encoder_config) if config.tts_model_type == "base" else None
        )


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_network(files: CheckpointFiles, device: str | torch.device, dtype: torch.dtype | None) -> Qwen3TTSNetwork:
    """The talker (+ speaker encoder) alone: what a talker worker process needs."""
    device = torch.device(device)
    with torch.device(device):
        network = Qwen3TTSNetwork(files.config)
    load_module(network, read_weights(files.weights), f"{files.root}/model.safetensors")
    return cast_weights(network, dtype or default_dtype(device)).eval()


def load_speech_tokenizer(
    files: CheckpointFiles, device: str | torch.device, dtype: torch.dtype | None
) -> SpeechTokenizer:
    """The codec (encoder + Code2Wav): what a Code2Wav worker process needs. Built on the host and then moved, as the
    official loader does: the Mimi encoder's RoPE frequencies (transformers' code) are computed at construction, and
    a GPU's pow may round them differently from the CPU's."""
    device = torch.device(device)
    codec = SpeechTokenizer(files.speech_tokenizer_config)
    load_module(codec, read_weights(files.speech_tokenizer_weights), f"{files.root}/speech_tokenizer")
    return cast_weights(codec.to(device), dtype or default_dtype(device)).eval()
