"""The memory plan on the released configs (shapes only, nothing loaded): the KV cache and weights it counts, the talker
shape it picks for a machine, and the shapes it refuses, by name and with the numbers."""

from __future__ import annotations

import dataclasses

import pytest

from engine.config import ConfigError, EngineConfig, MemoryConfig, StageConfig
from engine.memory import DeviceMemory, GiB, plan_memory
from engine.model.config import Qwen3TTSConfig, SpeechTokenizerConfig
from engine.model.loading import CheckpointFiles
from engine.model.tiny import RELEASE_CONFIGS

CODEC_WEIGHTS = 114_323_137 + 56_234_304  # the decoder's and the encoder's, as tests/model/test_release_configs.py


def released(name: str) -> CheckpointFiles:
    """A released checkpoint's configs without its weights: all a plan reads."""
    config = Qwen3TTSConfig.from_file(RELEASE_CONFIGS / f"Qwen3-TTS-12Hz-{name}.json")
    codec = SpeechTokenizerConfig.from_file(RELEASE_CONFIGS / "Qwen3-TTS-Tokenizer-12Hz.json")
    return CheckpointFiles(RELEASE_CONFIGS, config, {}, [], codec, [])


def machine(total_gib: float, free_gib: float | None = None) -> DeviceMemory:
    return DeviceMemory(int(total_gib * GiB), int((total_gib if free_gib is None else free_gib) * GiB))


def shaped(seqs: int | None, model_len: int | None, **config) -> EngineConfig:
    talker = StageConfig(executor=config.pop("talker", "uni"), max_num_seqs=seqs, max_model_len=model_len)
    code2wav = StageConfig(executor=config.pop("code2wav", "uni"), max_num_seqs=4)
    return EngineConfig(talker=talker, code2wav=code2wav, **config)


def test_the_kv_cache_and_the_weights_are_counted_exactly() -> None:
    plan = plan_memory(shaped(8, 4096), released("0.6B-Base"), machine(1024))
    # 28 layers x (8 + 1 scratch) slots x 8 kv heads x 4096 positions x 128, keys and values, float32 on CPU
    assert plan.kv_cache == 2 * 28 * 9 * 8 * 4096 * 128 * 4 == 9 * plan.kv_slot_bytes
    (engine,) = plan.processes  # uni-uni: one process holds everything
    assert engine.weights == pytest.approx((914.6e6 + CODEC_WEIGHTS) * 4, rel=1e-4)
    bf16 = plan_memory(shaped(8, 4096, dtype="bfloat16"), released("0.6B-Base"), machine(1024))
    assert bf16.kv_cache == plan.kv_cache // 2 and bf16.processes[0].weights == engine.weights // 2


@pytest.mark.parametrize("total_gib", [24, 32, 48])
def test_left_out_the_talker_shape_is_the_largest_that_fits_the_budget(total_gib: float) -> None:
    config, files = EngineConfig(), released("0.6B-Base")
    plan = plan_memory(config, files, machine(total_gib))
    assert plan.max_model_len == 4096 and 1 <= plan.max_num_seqs <= 8
    assert plan.total <= 0.7 * total_gib * GiB  # the CPU default: memory.utilization 0.7
    if plan.max_num_seqs < 8:  # one slot more would not have fit
        bigger = dataclasses.replace(config.talker, max_num_seqs=plan.max_num_seqs + 1, max_model_len=4096)
        with pytest.raises(ConfigError):
            plan_memory(dataclasses.replace(config, talker=bigger), files, machine(total_gib))
    assert plan_memory(plan.apply(config), files, machine(total_gib)) == plan  # as picked, it is accepted as given


def test_more_memory_gives_more_slots_and_a_gpu_its_own_defaults() -> None:
    files = released("1.7B-Base")
    small, large = (plan_memory(EngineConfig(), files, machine(gib)) for gib in (24, 64))
    assert (small.max_num_seqs, small.max_model_len) < (large.max_num_seqs, large.max_model_len)
    assert large.max_num_seqs == 8  # the most picked on CPU
    gpu = plan_memory(EngineConfig(device="cuda"), files, machine(80))
    assert (gpu.dtype, gpu.max_num_seqs, gpu.max_model_len) == ("bfloat16", 32, 4096)
    assert "memory.utilization 0.9 x 80.00 GiB" in gpu.describe()


def test_where_one_request_of_4096_positions_does_not_fit_a_shorter_max_model_len_is_picked() -> None:
    plan = plan_memory(EngineConfig(), released("0.6B-Base"), machine(16))
    assert plan.max_model_len < 4096 and plan.total <= 0.7 * 16 * GiB


def test_a_given_shape_that_does_not_fit_is_refused_with_the_keys_and_the_numbers() -> None:
    with pytest.raises(ConfigError) as refused:
        plan_memory(shaped(8, 4096), released("0.6B-Base"), machine(16))
    message = str(refused.value)
    assert "talker.max_num_seqs 8 x talker.max_model_len 4096" in message
    assert "KV cache 7.88 GiB" in message and "memory.utilization 0.7 x 16.00 GiB" in message
    with pytest.raises(ConfigError, match="no talker shape fits, not even talker.max_num_seqs 1 x .* 1024"):
        plan_memory(EngineConfig(), released("1.7B-Base"), machine(12))


def test_what_is_free_now_bounds_a_picked_shape_not_a_given_one() -> None:
    files = released("0.6B-Base")
    busy = machine(64, free_gib=14)
    picked = plan_memory(EngineConfig(), files, busy)
    assert picked.total <= 14 * GiB < plan_memory(EngineConfig(), files, machine(64)).total
    given = plan_memory(shaped(8, 4096), files, busy)  # within the budget (0.7 x 64 GiB): honoured, over what is free
    assert given.total > 14 * GiB and "14.00 GiB free now" in given.describe()


def test_kv_cache_gb_sizes_the_kv_cache_alone() -> None:
    files, kv = released("0.6B-Base"), MemoryConfig(kv_cache_gb=2.0)
    plan = plan_memory(EngineConfig(memory=kv), files, machine(24))
    assert plan.max_model_len == 4096 and plan.kv_cache <= 2 * GiB < plan.kv_cache + plan.kv_slot_bytes
    with pytest.raises(ConfigError, match=r"need a 7\.88 GiB KV cache .* over memory.kv_cache_gb 2"):
        plan_memory(shaped(8, 4096, memory=kv), files, machine(1024))


def test_each_mp_worker_holds_its_own_part_and_the_talker_worker_the_kv_cache() -> None:
    files = released("0.6B-Base")
    uni = plan_memory(shaped(4, 4096), files, machine(1024))
    mp = plan_memory(shaped(4, 4096, talker="mp", code2wav="mp"), files, machine(1024))
    engine, talker, code2wav = mp.processes
    assert (engine.name, talker.name, code2wav.name) == ("engine", "talker worker", "code2wav worker")
    assert talker.kv_cache == uni.kv_cache and engine.kv_cache == code2wav.kv_cache == 0
    assert code2wav.weights == CODEC_WEIGHTS * 4  # the loader reads the whole codec, encoder included
    # the speaker encoder and the codec encoder are in two processes now, the runtime in three
    assert mp.total - uni.total == engine.weights + 2 * engine.runtime
    text = mp.describe()
    assert "talker KV cache: 5 slots (max_num_seqs 4 + 1 scratch) x max_model_len 4096 = 4.38 GiB" in text
    assert "talker worker" in text and "a 30 s reference prefix" in text


def test_a_checkpoint_without_voice_cloning_has_no_reference_prefix_to_decode() -> None:
    base = plan_memory(shaped(4, 4096), released("0.6B-Base"), machine(1024))
    custom = plan_memory(shaped(4, 4096), released("0.6B-CustomVoice"), machine(1024))
    assert custom.processes[0].working < base.processes[0].working
    assert "reference prefix" not in custom.describe() and "prep" not in custom.working_note
