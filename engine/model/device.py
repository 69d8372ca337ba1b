"""Small host values onto the device without stalling it.

`torch.tensor(values, device="cuda")` copies synchronously: the host waits until every kernel already queued has run,
so a decode step that builds its per-row index and settings tensors that way stalls between the code predictor and
the talker. Through pinned memory the copy is queued like a kernel and the host goes on (the pinned block is not
reused before the copy is done: torch's caching host allocator records the copy's stream). On the CPU it is
`torch.tensor` as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def host_tensor(values: Sequence, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """`torch.tensor(values, dtype=dtype, device=device)`, queued without a host sync when `device` is a GPU."""
    if device is None or torch.device(device).type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.tensor(values, dtype=dtype, pin_memory=True).to(device, non_blocking=True)
