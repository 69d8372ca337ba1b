"""`host_tensor`: small host values onto the device; on the CPU exactly `torch.tensor`."""

from __future__ import annotations

import torch

from engine.model.device import host_tensor


def test_on_the_cpu_it_is_torch_tensor():
    for values, dtype in (([3, 1, 2], None), ([[1.05], [1.0]], torch.float32), ([0.9], torch.float64)):
        expected = torch.tensor(values, dtype=dtype)
        got = host_tensor(values, "cpu", dtype)
        assert got.dtype == expected.dtype and got.device.type == "cpu" and torch.equal(got, expected)
    assert host_tensor([5]).dtype == torch.int64  # inferred as torch.tensor infers it
