"""`Replicas`: N copies of the pipeline behind the one engine API (`replicas: N` in the config), each a `Router` with
its own stages (on its own resources, when they are `ray` actors), its own places and its own ledger, so that a
replica's dead worker fails only that replica's requests.

A request goes to the replica with the most free capacity when it is admitted: the most free talker slots (its
`max_num_seqs` less the requests it holds), then the fewest frames queued (those its requests may still make: one
long request weighs more than two short ones); a replica that refuses it (a stage without a worker, full) passes it
to the next. From then on everything about it goes to that replica. With one replica this is the one `Router`, its
stages named as they always were."""

from __future__ import annotations

import functools
from collections.abc import Callable

from engine.config import RayClusterConfig, StageConfig
from engine.parallel import start_all
from engine.request import EngineBusy, EngineError, StageUnavailable
from engine.router import Router, Stream
from engine.runtime import Executor
from engine.runtime.loop import StageFactory
from engine.runtime.restarter import Restarter
from engine.stages.messages import AudioOut, TalkerJob, WarmPrefix
from telemetry.events import Recorder


def replica_label(index: int, count: int) -> str:
    """What follows a stage's name in replica `index`'s processes and events: "" when there is one replica."""
    return f"@r{index}" if count > 1 else ""


class Replicas:
    """The engine's routers, one per replica, and which replica holds each request."""

    def __init__(self, count: int, places: int, talker_slots: int, rec: Recorder) -> None:
        self.routers = [Router(places, rec, replica_label(i, count)) for i in range(count)]
        self.talker_slots = talker_slots
        self._owner: dict[str, Router] = {}

    def start(
        self,
        configs: dict[str, StageConfig],
        factories: dict[str, StageFactory],
        direct_link: bool = True,
        cluster: RayClusterConfig | None = None,
    ) -> None:
        """Every replica's stages (`Router.start`): the replicas side by side when no stage runs in this process."""
        starts = [functools.partial(router.start, configs, factories, direct_link, cluster) for router in self.routers]
        start_all(starts, side_by_side=all(config.executor != "uni" for config in configs.values()))

    # -- the engine's view of all of them

    @property
    def stages(self) -> dict[str, Executor]:
        """Every replica's executors by name ("talker", or "talker@r1" with replicas)."""
        return {executor.name: executor for router in self.routers for executor in router.stages.values()}

    @property
    def restarters(self) -> dict[str, Restarter]:
        return {r.executor.name: r for router in self.routers for r in router.restarters.values()}

    @property
    def streams(self) -> dict[str, Stream]:
        return {rid: stream for router in self.routers for rid, stream in list(router.streams.items())}

    @property
    def places(self) -> int:
        return sum(router.places for router in self.routers)

    def requests_in(self, kind: str) -> list[str]:
        """The requests a `kind` stage of any replica may hold now."""
        return [rid for router in self.routers for rid in router.requests_in(kind)]

    @property
    def closed(self) -> bool:
        return all(router.closed for router in self.routers)

    def ready(self) -> dict[str, bool]:
        """Stage name -> whether some replica has it up and whole: a replica with a stage down serves nothing."""
        whole = [router.ready() for router in self.routers if all(router.ready().values())]
        first = self.routers[0].ready()
        return {kind: bool(whole) or (len(self.routers) == 1 and up) for kind, up in first.items()}

    def replica_of(self, rid: str) -> int | None:
        router = self._owner.get(rid)
        return self.routers.index(router) if router is not None else None

    # -- a request's life, on its replica

    def admit(self, rid: str) -> Stream:
        """A place on the replica with the most free capacity that takes it; the least loaded one's refusal if
        none does."""
        refusals: list[EngineError] = []
        for router in sorted(self.routers, key=self._free, reverse=True):
            try:
                stream = router.admit(rid)
            except (StageUnavailable, EngineBusy) as exc:  # this replica cannot now; another may
                refusals.append(exc)
                continue
            self._owner[rid] = router
            return stream
        raise refusals[0]

    def _free(self, router: Router) -> tuple[int, int]:
        streams = list(router.streams.values())
        return self.talker_slots - len(streams), -sum(s.frames_due for s in streams)

    def run(self, job: TalkerJob) -> None:
        self._owner[job.request_id].run(job)

    def consumed(self, out: AudioOut) -> None:
        router = self._owner.get(out.request_id)
        if router is not None:
            router.consumed(out)

    def warm(self, prefix: WarmPrefix, rid: str | None = None) -> None:
        """For `rid`'s replica; with no request (a voice prepared ahead), for every replica."""
        router = self._owner.get(rid) if rid is not None else None
        for target in [router] if router is not None else self.routers:
            target.warm(prefix)

    def end(self, rid: str, cancel: bool) -> None:
        router = self._owner.pop(rid, None)
        if router is not None:
            router.end(rid, cancel)

    def close(self, left: Callable[[], float]) -> None:
        for router in self.routers:
            router.close(left)
