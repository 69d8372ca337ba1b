"""Engine configs: every shipped YAML loads, and a bad key or value is refused with a message that names it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine.config import ConfigError, EngineConfig, MemoryConfig, StageConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load(path: Path) -> None:
    config = EngineConfig.from_yaml(path)
    assert config.talker.executor in ("uni", "mp") and config.code2wav.executor in ("uni", "mp")


def test_all_four_executor_combinations_ship_for_the_tiny_model() -> None:
    combos = {(c.talker.executor, c.code2wav.executor) for c in map(EngineConfig.from_yaml, CONFIGS) if c.model is None}
    assert combos == {("uni", "uni"), ("uni", "mp"), ("mp", "uni"), ("mp", "mp")}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("modle: x\n", "unknown key.*modle"),
        ("talker:\n  exector: mp\n", r"unknown key.*talker\.exector"),
        ("talker:\n  executor: threads\n", "executor must be one of"),
        ("talker:\n  max_num_seqs: 0\n", "max_num_seqs must be >= 1"),
        ("talker:\n  max_num_seqs: lots\n", "talker.max_num_seqs must be of type int"),
        ("chunking:\n  chunk_frames: 0\n", "chunk_frames"),
        ("limits:\n  credits: -1\n", "limits.credits must be >= 1"),
        ("dtype: float8\n", "dtype must be one of"),
        ("device: tpu\n", "device must be"),
        ("talker:\n  restart_max_s: 0\n", "talker.restart_max_s must be a number of seconds > 0"),
        ("code2wav:\n  restart_backoff_s: .nan\n", "code2wav.restart_backoff_s must be"),
        ("close_grace_s: -1\n", "close_grace_s must be a number of seconds >= 0"),
        ("limits:\n  max_ref_text_chars: 0\n", "limits.max_ref_text_chars must be >= 1"),
        ("- a\n- list\n", "top level must be a mapping"),
        ("talker: [1, 2]\n", "talker. must be a mapping|talker must be a mapping"),
        ("ray:\n  placement_strategy: pack\n", "ray.placement_strategy must be one of PACK, SPREAD"),
        ("ray:\n  placement_timeout_s: 0\n", "ray.placement_timeout_s must be > 0"),
    ],
)
def test_bad_configs_are_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        EngineConfig.from_yaml(path)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        EngineConfig.from_yaml(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("memory:\n  utilization: 0\n", "memory.utilization must be a number > 0 and <= 1"),
        ("memory:\n  utilization: 1.5\n", "memory.utilization must be"),
        ("memory:\n  utilization: most\n", "memory.utilization must be"),
        ("memory:\n  kv_cache_gb: -1\n", "memory.kv_cache_gb must be a number > 0"),
        ("memory:\n  kv_cache_gb: true\n", "memory.kv_cache_gb must be"),
        ("memory:\n  kv_cache: 2\n", r"unknown key.*memory\.kv_cache\b"),
        ("code2wav:\n  max_num_seqs: null\n", "code2wav.max_num_seqs must be of type int"),
    ],
)
def test_bad_memory_settings_are_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        EngineConfig.from_yaml(path)


def test_talker_sizes_left_out_are_left_to_the_memory_plan(tmp_path: Path) -> None:
    """A section's keys left out keep the engine's defaults for that section: the talker's shape is picked at start
    (engine.memory), code2wav batches 4, whether or not the file names the section."""
    path = tmp_path / "partial.yaml"
    path.write_text("talker:\n  executor: mp\ncode2wav:\n  executor: mp\nmemory:\n  utilization: 0.5\n")
    config = EngineConfig.from_yaml(path)
    assert (config.talker.max_num_seqs, config.talker.max_model_len) == (None, None)
    assert config.code2wav.max_num_seqs == EngineConfig().code2wav.max_num_seqs == 4
    assert (config.memory.utilization, config.memory.kv_cache_gb) == (0.5, None)
    assert EngineConfig().talker.max_num_seqs is None  # the Python default too
    with pytest.raises(ConfigError, match="code2wav.max_num_seqs"):  # only the talker's shape is planned
        EngineConfig(code2wav=StageConfig(max_num_seqs=None))


def test_a_config_written_out_loads_back_as_it_was() -> None:
    """What `profiling.space.config_yaml` writes: the talker's shape left to the plan is written as null."""
    for config in (EngineConfig(), EngineConfig(memory=MemoryConfig(utilization=0.5), talker=StageConfig())):
        assert EngineConfig.from_dict(dataclasses.asdict(config)) == config


def test_the_default_config_keeps_its_explicit_talker_shape() -> None:
    config = EngineConfig.from_yaml(Path(__file__).resolve().parents[2] / "configs" / "default.yaml")
    assert (config.talker.max_num_seqs, config.talker.max_model_len) == (8, 2048)
