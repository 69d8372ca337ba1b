"""The utilization sampler: CPU samples for a live process on the events' clock, and a stop that does not wait."""

from __future__ import annotations

import os
import sys
import time
import types

import pytest
import torch

from profiling.utilization import CPU_PERCENT, GPU_BUSY_PERCENT, GPU_MEMORY_MB, UtilizationSampler
from telemetry.events import COUNTER, UTILIZATION, now_ns


def test_sampler_yields_cpu_samples_for_this_process():
    start = now_ns()
    with UtilizationSampler([os.getpid()], interval_s=0.02) as sampler:
        deadline = time.monotonic() + 60  # a bound on a stalled sampler, not the expected time
        while sum(e.name == CPU_PERCENT for e in sampler.events) < 5:  # keep one core busy until 5 samples
            assert time.monotonic() < deadline, "the sampler took no 5 samples in 60 s"
            sum(range(1000))
    cpu = [e for e in sampler.events if e.name == CPU_PERCENT]
    assert len(cpu) >= 5
    assert all(e.kind == COUNTER and e.track == UTILIZATION and e.pid == os.getpid() for e in cpu)
    assert [e.start_ns for e in cpu] == sorted(e.start_ns for e in cpu) and cpu[0].start_ns > start
    assert max(e.args["value"] for e in cpu) > 20  # percent of one core
    gpu = [e for e in sampler.events if e.name.startswith("gpu")]
    assert bool(gpu) == sampler.has_gpu


def test_stop_wakes_the_sampler_at_once_and_a_short_run_still_gets_a_sample():
    sampler = UtilizationSampler(interval_s=30).start()
    time.sleep(0.05)
    t = time.perf_counter()
    samples = sampler.stop()
    assert time.perf_counter() - t < 10.0  # far below the 30 s interval it would otherwise wait out
    assert [e.name for e in samples if e.pid == os.getpid()] == [CPU_PERCENT]  # covering the whole 50 ms


def test_a_process_that_ends_is_dropped_not_fatal():
    sampler = UtilizationSampler([os.getpid(), 2**22 + 1], interval_s=0.01).start()  # no such pid
    time.sleep(0.1)
    assert {e.pid for e in sampler.stop()} == {os.getpid()}


def test_gpu_samples_come_from_nvml_when_it_is_there(monkeypatch):
    """No GPU in CI: a stand-in pynvml checks what the sampler reads and how it names the series."""

    class FakeNvml(types.SimpleNamespace):
        closed = False

        def nvmlShutdown(self):
            FakeNvml.closed = True

    fake = FakeNvml(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: f"gpu{i}",
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=87, memory=40),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=3 * 2**30, total=80 * 2**30),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with UtilizationSampler(interval_s=0.01) as sampler:
        time.sleep(0.1)
    assert sampler.has_gpu and FakeNvml.closed
    busy = [e.args["value"] for e in sampler.events if e.name == f"gpu0.{GPU_BUSY_PERCENT}"]
    memory = [e.args["value"] for e in sampler.events if e.name == f"gpu0.{GPU_MEMORY_MB}"]
    assert busy and set(busy) == {87.0} and set(memory) == {3072.0}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device and its driver")
def test_a_real_gpu_is_sampled_through_nvml_while_it_works():
    x = torch.randn(4096, 4096, device="cuda")
    with UtilizationSampler(interval_s=0.05) as sampler:
        deadline = time.perf_counter() + 1.0
        while time.perf_counter() < deadline:
            x = x @ x / 4096
        torch.cuda.synchronize()
    assert sampler.has_gpu
    busy = [e.args["value"] for e in sampler.events if e.name == f"gpu0.{GPU_BUSY_PERCENT}"]
    memory = [e.args["value"] for e in sampler.events if e.name == f"gpu0.{GPU_MEMORY_MB}"]
    assert max(busy) > 50 and min(memory) >= 64  # a busy GPU holding at least the 64 MB matrix


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
