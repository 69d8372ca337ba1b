"""The pool of lab engines, on real tiny engines (uni: about a second each to build); only the free-memory figure is
made up, so that the memory rule can be reached: engines stay warm between uses, the least recently used idle one
makes room, an engine in use by a run is never closed, a refusal gives the numbers."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from engine import Engine, EngineConfig, SpeechRequest
from tests.conftest import voice_like_clip
from ui.lab import LabEngine, LabLimits, LabUnavailable

GIB = 2**30
BASE = EngineConfig()
CUSTOM = dataclasses.replace(BASE, tiny_task="custom_voice")
DESIGN = dataclasses.replace(BASE, tiny_task="voice_design")


class Built(list):
    """The real engine, with a note of every config it was built for."""

    def __call__(self, config: EngineConfig) -> Engine:
        self.append(config)
        return Engine(config)


def pool(limits: LabLimits, free: Callable[[LabEngine], int] | None = None) -> tuple[LabEngine, Built]:
    """A pool whose engines need 1 GiB each (weights x 1, nothing reserved unless `limits` says so); `free(lab)` is
    the free memory the pool sees (plenty when None)."""
    built = Built()
    lab: LabEngine = LabEngine(GIB, limits, build=built, free=lambda device: free(lab) if free else 64 * GIB)
    return lab, built


async def use(lab: LabEngine, *configs: EngineConfig) -> None:
    for config in configs:
        async with lab.use(config):
            pass


def test_engines_stay_warm_side_by_side_and_the_least_recently_used_idle_one_makes_room() -> None:
    lab, built = pool(LabLimits(weights_factor=1, reserve_bytes=0, max_engines=2))
    try:
        asyncio.run(use(lab, BASE, CUSTOM, BASE, CUSTOM, BASE))  # two configs in turn: each built once
        assert built == [BASE, CUSTOM]
        custom = lab.engine_if_up(CUSTOM)
        asyncio.run(use(lab, DESIGN))  # a third: the pool is full, CUSTOM was used longer ago than BASE
        assert built == [BASE, CUSTOM, DESIGN]
        assert lab.engine_if_up(CUSTOM) is None and custom.router.closed
        assert [w.config for w in lab.status().warm] == [DESIGN, BASE]  # most recently used first
        assert lab.config == DESIGN
    finally:
        lab.close()
    assert lab.status().warm == []


def test_when_memory_runs_short_idle_engines_are_closed_first() -> None:
    # 2.5 GiB free with no lab engine, 1 GiB taken by each: two fit, a third closes the least recently used
    lab, built = pool(
        LabLimits(weights_factor=1, reserve_bytes=0), free=lambda lab: int(2.5 * GIB) - GIB * len(lab.status().warm)
    )
    try:
        asyncio.run(use(lab, BASE, CUSTOM, BASE, DESIGN))
        assert built == [BASE, CUSTOM, DESIGN]
        assert [w.config for w in lab.status().warm] == [DESIGN, BASE]
    finally:
        lab.close()


def test_an_engine_in_use_by_a_run_is_never_closed() -> None:
    lab, built = pool(LabLimits(weights_factor=1, reserve_bytes=0, max_engines=1))

    async def scenario() -> None:
        async with lab.use(BASE) as running:
            async with lab.use(BASE) as shared:  # the same config: shared, not built again
                assert shared is running
            assert lab.status().warm[0].runs == 1 and "(running)" in lab.status().markdown()
            with pytest.raises(LabUnavailable, match=r"All 1 lab engines are in use by runs \(tiny-base"):
                await use(lab, CUSTOM)
            request = SpeechRequest(
                "Still here.", ref_audio=(voice_like_clip(1.0, 24000), 24000), x_vector_only=True, max_new_tokens=3
            )
            chunks = [chunk async for chunk in running.generate(request)]  # the run in progress was not cut
            assert chunks[-1].is_last
        await use(lab, CUSTOM)  # once it ended, it makes room
        assert running.router.closed

    try:
        asyncio.run(scenario())
        assert built == [BASE, CUSTOM]
    finally:
        lab.close()


def test_no_lab_engine_without_the_memory_for_it() -> None:
    limits = LabLimits(weights_factor=2.0, reserve_bytes=GIB)  # 1 GiB of weights: needs 3 GiB free
    short, built = pool(limits, free=lambda lab: int(2.5 * GIB))
    with pytest.raises(LabUnavailable, match=r"needs about 3.00 GiB .* and 2.50 GiB is free"):
        asyncio.run(use(short, BASE))
    assert built == []  # refused before anything was built
    enough, built = pool(limits, free=lambda lab: 3 * GIB)
    try:
        asyncio.run(use(enough, BASE))
        assert built == [BASE]
        assert "needs 3.00 GiB free (2 x the model's weights, plus 1.00 GiB" in enough.status().markdown()
    finally:
        enough.close()


def test_a_lab_engine_that_fails_to_start_is_reported_without_its_internals(tmp_path: Path) -> None:
    missing = dataclasses.replace(BASE, model=str(tmp_path / "checkpoint"))  # the config is the page's own: named
    lab, _ = pool(LabLimits())
    with pytest.raises(LabUnavailable, match="did not start; see the server log") as refused:
        asyncio.run(use(lab, missing))
    assert "no checkpoint folder" not in str(refused.value)  # the failure's own text stays in the server log
    assert lab.status().warm == []


def test_nothing_is_built_after_close() -> None:
    lab, built = pool(LabLimits())
    lab.close()
    with pytest.raises(LabUnavailable, match="shutting down"):
        asyncio.run(use(lab, BASE))
    assert built == []


def test_limits_refuse_a_pool_of_no_engines() -> None:
    with pytest.raises(ValueError, match="max_engines must be >= 1"):
        LabLimits(max_engines=0)
