"""A placement group for one replica's `ray` stages (`ray.placement_strategy` in the config, PACK unless set): Ray
reserves a bundle for each stage, all at once and by the strategy (PACK: on one node where it can; STRICT_PACK: on
one node or not at all; SPREAD, STRICT_SPREAD: across nodes), before any of the replica's actors starts. A pipeline
is thus placed whole or refused whole, with a clear error, rather than one stage started and the other waiting for
room that never comes; and a replaced actor goes back into its stage's bundle, whose resources stayed reserved."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from engine.config import RayClusterConfig, RayPlacement
from engine.runtime.executor import ExecutorError

GROUP_PREFIX = "voxtrace-"  # voxtrace-<pid of the engine>-<replica>-<random>, as `ray list placement-groups` shows


def actor_resources(placement: RayPlacement) -> dict[str, float]:
    """The custom resources an actor asks for: the stage's own, and its node's (every node offers one unit of
    "node:<its ip>", so a sliver of it pins the actor there)."""
    resources = dict(placement.resources)
    if placement.node is not None:
        resources[f"node:{placement.node}"] = 0.001
    return resources


@dataclass(frozen=True)
class Bundle:
    """A stage's bundle in its replica's group: where its actor (and every replacement) is scheduled."""

    group: Any  # ray.util.placement_group.PlacementGroup
    index: int

    def strategy(self) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=self.index)


def reserve(placements: dict[str, RayPlacement], cluster: RayClusterConfig, owner: str) -> dict[str, Bundle]:
    """One group with a bundle per stage (`placements`: stage -> what it asks for), reserved now; ExecutorError
    when the cluster has no room for all of them within `cluster.placement_timeout_s`. A stage that asks for nothing
    needs no room and gets no bundle (Ray holds no empty one)."""
    wanted = {kind: bundle for kind, p in placements.items() if (bundle := _bundle(p))}
    if not wanted:
        return {}
    name = f"{GROUP_PREFIX}{owner}-{secrets.token_hex(4)}"
    group = placement_group(list(wanted.values()), strategy=cluster.placement_strategy, name=name)
    if not group.wait(cluster.placement_timeout_s):
        remove_placement_group(group)
        what = f"the {' and '.join(wanted)} stage{'s together' if len(wanted) > 1 else ''}"
        asked = "; ".join(f"{kind}: {bundle}" for kind, bundle in wanted.items())
        raise ExecutorError(
            f"the Ray cluster had no room for {what} ({cluster.placement_strategy}: {asked}) "
            f"within {cluster.placement_timeout_s:g} s"
        )
    return {kind: Bundle(group, i) for i, kind in enumerate(wanted)}


def _bundle(p: RayPlacement) -> dict[str, float]:
    bundle = {"CPU": p.num_cpus, "GPU": p.num_gpus, **actor_resources(p)}
    return {name: amount for name, amount in bundle.items() if amount}


def release(bundles: dict[str, Bundle]) -> None:
    """Give the group `reserve` made back to the cluster (once its actors are gone)."""
    remove_placement_group(next(iter(bundles.values())).group)
