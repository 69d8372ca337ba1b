"""`fast` sampling: draws keyed by (seed, step, code position), one batched call for every row, HF's warpers."""

from __future__ import annotations

import torch

from engine.model.keyed_sampling import RowWarp, keyed_uniforms, sample_keyed, seed_key

PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])


def warp(rows: int, temperature=1.0, top_k=0, top_p=1.0, do_sample=True, k_cap=4) -> RowWarp:
    return RowWarp(
        torch.full((rows,), temperature),
        torch.full((rows,), top_k),
        torch.full((rows,), top_p),
        torch.full((rows,), do_sample),
        k_cap,
    )


def draws(rows: int, settings: RowWarp, seed: int = 7) -> torch.Tensor:
    """One draw per step 0..rows-1 of one seed's stream, all in one batch."""
    uniform = keyed_uniforms(seed_key(torch.full((rows,), seed)), torch.arange(rows))[:, 0]
    return sample_keyed(PROBS.log().expand(rows, -1), settings, uniform)


def test_a_draw_is_a_function_of_seed_step_and_position_only():
    key = seed_key(torch.tensor([1, 2, 1]))
    u = keyed_uniforms(key, torch.tensor([5, 5, 5]))
    assert torch.equal(u[0], u[2]) and (u[0] != u[1]).all()
    assert torch.equal(u[0], keyed_uniforms(seed_key(torch.tensor([1])), torch.tensor([5]))[0])  # in any batch
    assert len(set(u[0].tolist())) == 16  # each code position its own
    assert not set(keyed_uniforms(key[:1], torch.tensor([6]))[0].tolist()) & set(u[0].tolist())  # another step


def test_uniforms_cover_zero_to_one_evenly():
    u = keyed_uniforms(seed_key(torch.zeros(20_000, dtype=torch.int64)), torch.arange(20_000)).flatten()
    assert 0 <= u.min() and u.max() < 1
    counts = torch.histc(u.float(), bins=10, min=0, max=1)
    assert (counts - 32_000).abs().max() < 720  # 4 standard deviations of a bin's count


def test_draws_follow_the_probabilities():
    freq = torch.bincount(draws(40_000, warp(40_000)), minlength=4) / 40_000
    assert (freq - PROBS).abs().max() < 0.01


def test_top_k_and_top_p_restrict_the_draws_as_hf_warpers_do():
    assert set(draws(2000, warp(2000, top_k=2)).tolist()) == {0, 1}
    assert set(draws(2000, warp(2000, top_p=0.75)).tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.75
    assert set(draws(2000, warp(2000, top_p=0.8)).tolist()) == {0, 1}  # reaching p is enough
    assert set(draws(2000, warp(2000, top_p=0.81)).tolist()) == {0, 1, 2}
    low = torch.bincount(draws(4000, warp(4000, temperature=0.25)), minlength=4) / 4000
    assert low[0] > 0.8  # a low temperature sharpens towards the most likely id


def test_greedy_rows_take_the_argmax_and_broken_rows_draw_minus_one():
    scores = torch.randn(4, 2048)
    scores[2, 7] = float("nan")
    settings = RowWarp(
        torch.tensor([1.0, 1.0, 1.0, float("nan")]),
        torch.tensor([50, 50, 50, 50]),
        torch.ones(4),
        torch.tensor([False, True, True, True]),
        50,
    )
    ids = sample_keyed(scores, settings, torch.full((4,), 0.5, dtype=torch.float64))
    assert ids[0] == scores[0].argmax() and 0 <= ids[1] < 2048
    assert ids[2:].tolist() == [-1, -1]  # a nan score, a nan temperature


def test_sampling_reads_nothing_back_from_the_device():
    # meta tensors hold no data: any read-back (a host sync on a GPU, a break in a CUDA graph) would raise here
    host = warp(3, top_k=50, k_cap=50)
    on_meta = RowWarp(
        host.temperature.to("meta"), host.top_k.to("meta"), host.top_p.to("meta"), host.do_sample.to("meta"), 50
    )
    zeros = torch.zeros(3, dtype=torch.int64, device="meta")
    uniform = keyed_uniforms(seed_key(zeros), zeros)[:, 1]
    assert sample_keyed(torch.randn(3, 2048, device="meta"), on_meta, uniform).shape == (3,)
