"""The lab engine on its own, with a stand-in for `engine.Engine` (building a real one takes seconds; the app tests
build real ones): one at a time, kept while its config is asked, refused when busy or short of memory."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from engine import EngineConfig
from ui.lab import LabEngine, LabLimits, LabUnavailable

GIB = 2**30
UNI = EngineConfig()
MP = dataclasses.replace(UNI, talker=dataclasses.replace(UNI.talker, executor="mp"))


class StandIn:
    """What the lab does with an engine: build it from a config, close it."""

    def __init__(self, config: EngineConfig) -> None:
        self.config, self.closed = config, False

    def close(self) -> None:
        self.closed = True


def lab(free_bytes: int = 64 * GIB, limits: LabLimits | None = None) -> LabEngine:
    return LabEngine(GIB, limits or LabLimits(), build=StandIn, free=lambda device: free_bytes)


async def take(lab_engine: LabEngine, config: EngineConfig) -> StandIn:
    async with lab_engine.use(config) as engine:
        return engine


def test_the_lab_engine_is_kept_while_its_config_is_asked_and_replaced_when_idle() -> None:
    lab_engine = lab()
    first = asyncio.run(take(lab_engine, UNI))
    assert asyncio.run(take(lab_engine, UNI)) is first  # warm for a repeated click
    second = asyncio.run(take(lab_engine, MP))
    assert first.closed and not second.closed and second.config == MP
    lab_engine.close()
    assert second.closed and lab_engine.config is None


def test_another_config_while_a_run_holds_the_lab_engine_is_refused() -> None:
    lab_engine = lab()

    async def scenario() -> None:
        async with lab_engine.use(UNI) as running:
            async with lab_engine.use(UNI) as shared:  # the same config: shared
                assert shared is running
            with pytest.raises(LabUnavailable, match="busy with another run"):
                async with lab_engine.use(MP):
                    pass
            assert not running.closed  # the run in progress was not cut
        async with lab_engine.use(MP) as after:  # once it ended, the swap goes ahead
            assert running.closed and after.config == MP

    asyncio.run(scenario())


def test_no_lab_engine_without_the_memory_for_it() -> None:
    limits = LabLimits(weights_factor=2.0, reserve_bytes=GIB)  # 1 GiB of weights: needs 3 GiB free
    with pytest.raises(LabUnavailable, match=r"needs about 3.00 GiB .* and 2.50 GiB is free"):
        asyncio.run(take(lab(free_bytes=int(2.5 * GIB), limits=limits), UNI))
    assert asyncio.run(take(lab(free_bytes=3 * GIB, limits=limits), UNI)).config == UNI


def test_a_lab_engine_that_fails_to_start_is_reported_without_its_internals() -> None:
    def broken(config: EngineConfig) -> StandIn:
        raise OSError("/secret/path/model.safetensors: no such file")

    with pytest.raises(LabUnavailable, match="did not start; see the server log") as refused:
        asyncio.run(take(LabEngine(GIB, build=broken, free=lambda device: 64 * GIB), UNI))
    assert "/secret" not in str(refused.value)


def test_nothing_is_built_after_close() -> None:
    lab_engine = lab()
    lab_engine.close()
    with pytest.raises(LabUnavailable, match="shutting down"):
        asyncio.run(take(lab_engine, UNI))
