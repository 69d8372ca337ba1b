"""Loading a checkpoint folder in the official layout, and the errors that name what is wrong with one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.model.loading import CheckpointError
from engine.model.qwen3_tts import Qwen3TTS, SynthesisInput
from engine.model.sampling import SamplingParams

GREEDY = SamplingParams(do_sample=False, subtalker_dosample=False, max_new_tokens=6)
DESIGN = SynthesisInput(text="Hello.", instruct="A calm voice.")


@pytest.fixture
def design_copy(tmp_path: Path, checkpoints: dict[str, Path]) -> Path:
    return Path(shutil.copytree(checkpoints["voice_design"], tmp_path / "voice_design"))


def test_sharded_weights_give_the_same_model(design_copy: Path, checkpoints: dict[str, Path]) -> None:
    state = load_file(design_copy / "model.safetensors")
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, design_copy / shard)
    index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (design_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    (design_copy / "model.safetensors").unlink()

    sharded = Qwen3TTS.from_pretrained(design_copy)
    single = Qwen3TTS.from_pretrained(checkpoints["voice_design"])
    assert torch.equal(sharded.generate_codes(DESIGN, GREEDY), single.generate_codes(DESIGN, GREEDY))


def test_missing_text_vocabulary_is_rebuilt_offline(design_copy: Path, checkpoints: dict[str, Path]) -> None:
    (design_copy / "vocab.json").unlink()
    (design_copy / "merges.txt").unlink()
    rebuilt = Qwen3TTS.from_pretrained(design_copy)
    assert torch.equal(
        rebuilt.generate_codes(DESIGN, GREEDY),
        Qwen3TTS.from_pretrained(checkpoints["voice_design"]).generate_codes(DESIGN, GREEDY),
    )


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("config.json", "missing config.json"),
        ("generation_config.json", "missing generation_config.json"),
        ("model.safetensors", "no model.safetensors"),
        ("speech_tokenizer/model.safetensors", "speech_tokenizer: no model.safetensors"),
        ("speech_tokenizer", "missing the speech_tokenizer/ folder"),
    ],
)
def test_a_missing_file_is_named(design_copy: Path, remove: str, message: str) -> None:
    target = design_copy / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(CheckpointError, match=message):
        Qwen3TTS.from_pretrained(design_copy)


def test_a_missing_shard_is_named(design_copy: Path) -> None:
    (design_copy / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"talker.codec_head.weight": "model-00002-of-00002.safetensors"}})
    )
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        Qwen3TTS.from_pretrained(design_copy)


def test_a_wrong_model_type_is_refused(design_copy: Path) -> None:
    config = json.loads((design_copy / "config.json").read_text())
    config["model_type"] = "qwen2"
    (design_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_type 'qwen2'"):
        Qwen3TTS.from_pretrained(design_copy)


def test_weights_that_do_not_fit_the_config_are_refused(design_copy: Path) -> None:
    config = json.loads((design_copy / "config.json").read_text())
    config["talker_config"]["num_hidden_layers"] = 3
    (design_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="missing .* weights"):
        Qwen3TTS.from_pretrained(design_copy)


def test_a_folder_that_does_not_exist_is_not_mistaken_for_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        Qwen3TTS.from_pretrained(tmp_path / "nowhere" / "at-all")


def test_a_hub_id_without_network_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an empty Hub cache and offline mode: what a machine without network sees, without waiting on timeouts
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="no network connection"):
        Qwen3TTS.from_pretrained("Qwen/Qwen3-TTS-12Hz-0.6B-Base")


def test_dtype_is_a_choice(checkpoints: dict[str, Path]) -> None:
    model = Qwen3TTS.from_pretrained(checkpoints["voice_design"], dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert model.generate_codes(DESIGN, GREEDY).shape == (GREEDY.max_new_tokens - 1, 16)


def test_a_bfloat16_load_keeps_the_rope_frequencies_float32(checkpoints: dict[str, Path]) -> None:
    # as the official models loaded with a dtype: rounded to bf16, RoPE angles drift by radians over a long prompt
    fp32 = Qwen3TTS.from_pretrained(checkpoints["base"])
    bf16 = Qwen3TTS.from_pretrained(checkpoints["base"], dtype=torch.bfloat16)
    for module in (bf16.network, bf16.speech_tokenizer):
        rope = {n: b for n, b in module.named_buffers() if n.endswith("inv_freq")}
        assert rope and all(b.dtype == torch.float32 for b in rope.values())
        others = [t for n, t in [*module.named_parameters(), *module.named_buffers()] if n not in rope]
        assert all(t.dtype == torch.bfloat16 for t in others if t.is_floating_point())
    for name, freq in fp32.speech_tokenizer.named_buffers():
        if name.endswith("inv_freq"):
            assert torch.equal(bf16.speech_tokenizer.get_buffer(name), freq)
    assert torch.equal(bf16.talker.inv_freq, fp32.talker.inv_freq)
