"""CUDA graphs of the talker's decode step: one per batch bucket, captured at start-up, replayed with one launch.

The step (code 0, the code predictor's 15 steps, the talker's decode step and the writes into the slot table) reads
its rows through one slot-index tensor; each bucket's graph owns such a tensor, and a replay copies the step's slots
into it (padding rows point at the scratch slot) without a host sync. Capture runs the step on the scratch slot only,
so the warm-up runs change nobody's state. A bucket that fails to capture runs eagerly (logged once, at start-up).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch import Tensor

from engine.model.device import host_tensor

log = logging.getLogger(__name__)

StepFn = Callable[[Tensor], Tensor]  # slot indices (B,) -> the step's (B, 17) frames and flags, on the device


class StepGraphs:
    def __init__(self, step: StepFn, buckets: list[int], scratch: int, device: torch.device) -> None:
        self.device = device
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor, Tensor]] = {}
        pool = torch.cuda.graph_pool_handle()
        start = time.perf_counter()
        with torch.inference_mode():
            for bucket in reversed(buckets):  # the largest first: the shared pool is sized by it
                slots = torch.full((bucket,), scratch, dtype=torch.int64, device=device)
                try:
                    graph, out = _capture(step, slots, pool)
                except Exception:
                    log.warning(
                        "talker: the decode step of batch %d could not be captured; it runs eagerly",
                        bucket,
                        exc_info=True,
                    )
                    continue
                self._graphs[bucket] = (graph, slots, out)
        log.info(
            "talker: captured %d CUDA graphs (batches %s) in %.2f s",
            len(self._graphs),
            sorted(self._graphs),
            time.perf_counter() - start,
        )

    def has(self, bucket: int) -> bool:
        return bucket in self._graphs

    def replay(self, slots: list[int]) -> Tensor:
        """The step for `slots` (a bucket's size): its graph's output tensor, valid until the next replay."""
        graph, static_slots, out = self._graphs[len(slots)]
        static_slots.copy_(host_tensor(slots, self.device), non_blocking=True)
        graph.replay()
        return out


def _capture(step: StepFn, slots: Tensor, pool) -> tuple[torch.cuda.CUDAGraph, Tensor]:
    # warm-up on a side stream, as capture requires: kernels are chosen and workspaces allocated outside the graph
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step(slots)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = step(slots)
    return graph, out
