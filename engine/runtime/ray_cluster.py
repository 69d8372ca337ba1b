"""The engine's connection to Ray: to the cluster `ray.address` (or RAY_ADDRESS) names, else to a local one it
starts. Shared by every engine of the process (Ray has one connection per process) and counted: the last engine to
let go disconnects, and only a local cluster this module started is stopped. A connection made by someone else (a
test's fixture, a script's own `ray.init`) is used as it is and left alone."""

from __future__ import annotations

import os
import threading

from engine.config import RayClusterConfig

_lock = threading.Lock()
_users = 0
_owned = False  # the connection (and, without an address, the local cluster) is ours to end


def acquire(config: RayClusterConfig) -> None:
    """Connect to the cluster (or start a local one) unless this process already is; count one more user."""
    global _users, _owned
    import ray

    with _lock:
        if not ray.is_initialized():
            address = config.address or os.environ.get("RAY_ADDRESS")
            if address:
                ray.init(address=address, namespace=config.namespace)
            else:
                ray.init(
                    num_cpus=config.num_cpus,
                    object_store_memory=config.object_store_mb * 2**20,
                    include_dashboard=False,
                    namespace=config.namespace,
                )
            _owned = True
        _users += 1


def release() -> None:
    """One user fewer; the last one ends a connection this module made (and stops the local cluster it started)."""
    global _users, _owned
    import ray

    with _lock:
        _users = max(_users - 1, 0)
        if _users == 0 and _owned:
            ray.shutdown()
            _owned = False
