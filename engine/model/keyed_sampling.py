"""Batched sampling whose randomness is a function of (request seed, step, code position): the `fast` sampling mode.

The `official` mode draws per row from a `torch.Generator` (one `torch.multinomial` per row and code: 16 launches per
row per frame, and a row's draws depend on the order rows draw in). Here every row of a step is sampled in one call:
the same warpers as HF (temperature -> top-k -> top-p) as batched tensor ops over the highest scores, sorted once,
then one uniform number per row turned into an id by inverse transform sampling (the first id whose cumulative
probability exceeds it). The uniforms are SplitMix64 at index `step * 16 + position` of the stream keyed by the seed,
a frame's 16 made at once: a counter-based generator in int64 tensor ops. Nothing is carried from step to step, so a
retried step redraws the same numbers, a row's draws do not depend on which rows share its batch, the same bits come
out on every device, and the whole draw is capturable in a CUDA graph (no host read-back, no generator state). One
uniform per row, not one per id as an exponential race needs, keeps it cheap on a CPU.

Greedy rows take the argmax of the scores, as in the official mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

CODES_PER_FRAME = 16  # code positions per step in the counter: code 0, then the predictor's 15


def _signed(value: int) -> int:
    """A 64-bit unsigned constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GAMMA = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 bits (torch's `>>` is arithmetic on signed integers)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(z: Tensor) -> Tensor:
    """SplitMix64's finalizer; int64 multiplication wraps around like the uint64 one."""
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def seed_key(seed: Tensor) -> Tensor:
    """The stream key of each seed (B,) int64, computed once when a request is admitted."""
    return _mix(seed * _GAMMA + _GAMMA)


def keyed_uniforms(key: Tensor, step: Tensor) -> Tensor:
    """(B, 16) float64 in [0, 1): draws `step * 16 + position` of each row's stream for the frame's 16 code
    positions (from the top 53 bits), made in one go at the start of a step."""
    positions = torch.arange(CODES_PER_FRAME, device=key.device)
    counter = step[:, None] * CODES_PER_FRAME + positions + 1
    return _shift_right(_mix(key[:, None] + counter * _GAMMA), 11).double() * 2.0**-53


@dataclass
class RowWarp:
    """Per-row warper settings as device tensors (B,): temperature float32; top_k int64 (0 = off); top_p float32;
    do_sample bool. `k_cap`: how many of the highest scores a row can keep, known on the host (the vocabulary when any
    row has top-k off, or when the step must not depend on its neighbours' settings)."""

    temperature: Tensor
    top_k: Tensor
    top_p: Tensor
    do_sample: Tensor
    k_cap: int


def sample_keyed(scores: Tensor, warp: RowWarp, uniform: Tensor) -> Tensor:
    """Ids (B,) int64 from processed scores (B, V) float32: argmax for greedy rows, else the draw `uniform` (B,) picks
    from softmax(warped scores). A row whose scores hold nan, or leave nothing to draw from, gets -1."""
    greedy = scores.argmax(dim=-1)
    k_cap = min(warp.k_cap, scores.shape[-1])
    top, order = torch.topk(scores / warp.temperature[:, None], k_cap, dim=-1, sorted=True)
    rank = torch.arange(k_cap, device=scores.device)
    top_k = torch.where(warp.top_k > 0, warp.top_k, k_cap)
    top = top.masked_fill(rank >= top_k[:, None], -torch.inf)
    probs = top.softmax(dim=-1)
    # top-p: keep an id while the probability of the ids above it is below p (the first is always kept)
    above = probs.cumsum(dim=-1) - probs
    probs = probs.masked_fill((above >= warp.top_p[:, None]) & (warp.top_p[:, None] < 1), 0.0)
    cumulative = probs.cumsum(dim=-1).double()
    threshold = uniform * cumulative[:, -1]
    pick = torch.searchsorted(cumulative, threshold[:, None], right=True).clamp_(max=k_cap - 1)
    drawn = order.gather(1, pick)[:, 0]
    total = cumulative[:, -1]
    valid = ~scores.isnan().any(dim=-1) & (~warp.do_sample | (torch.isfinite(total) & (total > 0)))
    return torch.where(valid, torch.where(warp.do_sample, drawn, greedy), -1)
