"""`GET /health` and `GET /ready`, for load balancers and orchestrators.

/health is liveness: 200 while the process serves requests at all. /ready is readiness: 200 while every stage of
every serving engine has a live worker (`engine.Engine.ready`), else 503 with the per-stage map and the stages that are
down, so traffic goes elsewhere while a dead worker is replaced. The other tasks' engines (the embedded tiny model
serves three) are named by their model: `tiny-custom_voice/talker`.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from engine import Engine
from ui.describe import model_id

__all__ = ["RETRY_AFTER_S", "down_stages", "health_router"]

RETRY_AFTER_S = 1  # a worker is replaced in seconds: ask again soon


def down_stages(stages: dict[str, bool]) -> list[str]:
    """The stages of an `Engine.ready()` map that have no live worker."""
    return [stage for stage, up in stages.items() if not up]


def all_stages(engine: Engine, others: Sequence[Engine] = ()) -> dict[str, bool]:
    """`engine`'s stages by name, then each other engine's as `<model>/<stage>`."""
    stages = dict(engine.ready())
    for other in others:
        stages |= {f"{model_id(other)}/{stage}": up for stage, up in other.ready().items()}
    return stages


def health_router(engine: Engine, others: Sequence[Engine] = ()) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/ready")
    async def ready() -> JSONResponse:
        stages = all_stages(engine, others)
        down = down_stages(stages)
        if down:
            body = {"status": "unavailable", "stages": stages, "down": down}
            return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
        return JSONResponse({"status": "ready", "stages": stages})

    return router
