"""Talker/predictor logits processing with HF 4.57.3 semantics, per-row settings and per-request generators."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.model.sampling import (
    SamplingError,
    SamplingParams,
    Warp,
    choose_tokens,
    process_talker_logits,
    suppress_mask,
    warp_logits,
)

EOS = 2150
GENERATION_CONFIG = Path("/work/shared/reference/configs/generation_config.json")


def test_defaults_are_the_release_generation_config():
    params = SamplingParams()
    assert params.min_new_tokens == 2
    if GENERATION_CONFIG.exists():
        for key, value in json.loads(GENERATION_CONFIG.read_text()).items():
            assert getattr(params, key) == value


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=0),
        dict(temperature=1e308),  # float32 inf: every score becomes nan
        dict(temperature=1e-300),  # float32 0
        dict(temperature=float("nan")),
        dict(temperature=float("inf")),
        dict(temperature=-1.0),
        dict(temperature="hot"),
        dict(subtalker_temperature=1e308),
        dict(top_p=0),
        dict(top_p=1.5),
        dict(top_p=float("nan")),
        dict(top_k=-1),
        dict(top_k=2**70),  # beyond int64
        dict(top_k=2.5),
        dict(top_k=True),  # a bool is not a count
        dict(subtalker_top_k=-1),
        dict(repetition_penalty=0),
        dict(repetition_penalty=1e-300),
        dict(repetition_penalty=float("inf")),
        dict(max_new_tokens=0),
        dict(max_new_tokens=2.5),
        dict(max_new_tokens=True),
        dict(min_new_tokens=-1),
        dict(do_sample=1),
        dict(subtalker_dosample="no"),
        dict(subtalker_top_p=2.0),
    ],
)
def test_bad_settings_fail_at_construction_naming_the_field(bad):
    field = next(iter(bad))
    with pytest.raises(SamplingError, match=f"^{field}: ") as refused:
        SamplingParams(**bad)
    assert refused.value.field == field
    assert isinstance(refused.value, ValueError)  # what callers of the dataclass already catch


def test_settings_at_the_edges_of_their_ranges_are_taken():
    params = SamplingParams(temperature=1e-3, top_k=0, top_p=1e-9, repetition_penalty=100, subtalker_temperature=100)
    assert params.temperature == 1e-3 and params.top_k == 0
    assert SamplingParams(temperature=1, top_p=1).temperature == 1  # whole numbers are numbers too


def _process(logits, generated_ids=(), num_generated=5, penalty=1.05, min_new=2):
    generated = torch.zeros_like(logits, dtype=torch.bool)
    generated[0, list(generated_ids)] = True
    return process_talker_logits(
        logits,
        generated,
        torch.tensor([num_generated]),
        torch.tensor([[penalty]]),
        torch.tensor([min_new]),
        suppress_mask(logits.shape[-1], EOS),
        EOS,
    )


def test_repetition_penalty_touches_only_generated_ids_dividing_positive_and_multiplying_negative():
    logits = torch.zeros(1, 3072)
    logits[0, :4] = torch.tensor([2.0, -2.0, 3.0, -3.0])
    out = _process(logits, generated_ids=[0, 1], penalty=2.0)
    assert out[0, :4].tolist() == [1.0, -4.0, 3.0, -3.0]


def test_special_ids_are_suppressed_except_eos_and_eos_waits_for_min_new_tokens():
    logits = torch.randn(1, 3072)
    out = _process(logits)
    assert torch.isinf(out[0, 2048:]).sum() == 1023 and torch.isfinite(out[0, EOS])
    assert torch.equal(out[0, :2048], logits[0, :2048])
    assert torch.isinf(_process(logits, num_generated=1)[0, EOS])
    assert torch.isfinite(_process(logits, num_generated=2)[0, EOS])


def test_top_k_keeps_the_k_highest_and_zero_disables_it():
    scores = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]] * 2)
    out = warp_logits(scores, Warp.of([1.0, 1.0], [2, 0], [1.0, 1.0]))
    assert torch.isfinite(out[0]).tolist() == [False, True, False, True, False]
    assert torch.equal(out[1], scores[1])


def test_top_p_keeps_the_smallest_set_reaching_p():
    scores = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    out = warp_logits(scores, Warp.of([1.0], [0], [0.75]))
    assert torch.isfinite(out[0]).tolist() == [True, True, False, False]


def test_temperature_divides_before_filtering_and_rows_match_alone():
    scores = torch.randn(3, 3072)
    warp = Warp.of([0.7, 1.0, 1.3], [20, 0, 50], [0.8, 1.0, 0.9])
    batched = warp_logits(scores, warp)
    for b, (t, k, p) in enumerate([(0.7, 20, 0.8), (1.0, 0, 1.0), (1.3, 50, 0.9)]):
        assert torch.equal(batched[b : b + 1], warp_logits(scores[b : b + 1], Warp.of([t], [k], [p])))
    assert torch.equal(batched[1], scores[1])
    assert torch.isfinite(batched[0]).sum() <= 20


def test_seeded_generators_repeat_and_ignore_the_global_rng():
    scores = torch.randn(2, 2048)
    warp = Warp.of([0.9, 0.9], [50, 50], [1.0, 1.0])

    def draw(seed_a, seed_b, steps=5):
        gens = [torch.Generator().manual_seed(seed_a), torch.Generator().manual_seed(seed_b)]
        return [choose_tokens(scores, warp, [True, True], gens).tolist() for _ in range(steps)]

    first = draw(1, 2)
    torch.manual_seed(99)
    assert draw(1, 2) == first
    # a row's draws depend on its own generator only, and equal the global RNG after manual_seed
    torch.manual_seed(1)
    expected = [
        torch.multinomial(warp_logits(scores[:1], Warp.of([0.9], [50], [1.0])).softmax(-1), 1).item() for _ in range(5)
    ]
    assert [row[0] for row in first] == expected


def test_greedy_rows_take_the_argmax_of_processed_scores():
    scores = torch.randn(2, 2048)
    ids = choose_tokens(scores, Warp.of([0.5, 0.5], [1, 1], [1.0, 1.0]), [False, True], [None, torch.Generator()])
    assert ids[0] == scores[0].argmax() and ids[1] == scores[1].argmax()  # top_k 1 leaves one choice


def test_warping_reads_nothing_back_from_the_device():
    # meta tensors hold no data: any read-back (a host sync on a GPU) would raise here
    scores = torch.randn(3, 2048, device="meta")
    warp = Warp.of([0.9, 1.0, 0.7], [50, 0, 20], [1.0, 0.8, 1.0], device="meta")
    assert warp.max_top_k == 50  # the top-k width comes from the host settings
    assert warp_logits(scores, warp).shape == (3, 2048)


def test_a_warp_built_without_its_host_top_k_reads_it_from_the_tensor():
    scores = torch.randn(2, 64)
    built = Warp.of([1.0, 1.0], [5, 0], [1.0, 1.0])
    direct = Warp(built.temperature, built.top_k, built.top_p_cut)
    assert torch.equal(warp_logits(scores, direct), warp_logits(scores, built))
