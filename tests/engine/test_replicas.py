"""Replicas in one process (`uni`-`uni`, `replicas: 2`): which replica a request is given. The same routing serves
`mp` and `ray` replicas (test_ray_executor.py kills one of those)."""

from __future__ import annotations

import asyncio
import dataclasses

from engine import Engine
from tests.engine.test_engine import clone, engine_config


async def drain(stream) -> None:
    async for _ in stream:
        pass


def test_a_request_goes_to_the_replica_with_the_fewest_frames_queued_when_free_slots_tie(checkpoints, clips) -> None:
    """A long request being read on one replica, a short one made but left unread on the other, a slot free on each:
    the next request goes where less is left to make (the short one's replica), not where less audio waits."""
    config = dataclasses.replace(engine_config(checkpoints["base"], max_num_seqs=2), replicas=2)
    with Engine(config) as engine:

        async def routed() -> list[int | None]:
            long, short, after = clone(clips, frames=2000), clone(clips, frames=12), clone(clips, frames=4)
            long_stream, short_stream = engine.generate(long), engine.generate(short)
            await anext(long_stream)
            reader = asyncio.create_task(drain(long_stream))  # its caller keeps up: none of its audio waits
            await anext(short_stream)  # then left unread
            made = engine.router.streams[short.request_id]
            while made.frames_due:  # no event says its last chunk came: look between two of the loop's turns
                await asyncio.sleep(0.01)
            after_stream = engine.generate(after)
            await anext(after_stream)
            where = [engine.router.replica_of(r.request_id) for r in (long, short, after)]
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            for stream in (long_stream, short_stream, after_stream):
                await stream.aclose()
            return where

        long_at, short_at, after_at = asyncio.run(asyncio.wait_for(routed(), 60))
    assert {long_at, short_at} == {0, 1} and after_at == short_at
