"""The engine's connection to Ray: to the cluster `ray.address` (or RAY_ADDRESS) names, else to a local one it
starts. Shared by every engine of the process (Ray has one connection per process) and counted: the last engine to
let go disconnects, and only a local cluster this module started is stopped. A connection made by someone else (a
test's fixture, a script's own `ray.init`) is used as it is and left alone.

The connection is made on a thread of its own that lives as long as it does: engines are often built on threads
that end (the app's lab, side-by-side start-up), and once the thread that called `ray.init` has ended, Ray 2.60's
placement-group calls from other threads block, and a minute later Ray ends the process: its cluster is lost."""

from __future__ import annotations

import functools
import os
import threading

from engine.config import RayClusterConfig
from engine.runtime.serial import SerialExecutor

_lock = threading.Lock()
_users = 0
_owned: SerialExecutor | None = None  # the thread that made the connection, while it is ours to end


def acquire(config: RayClusterConfig) -> None:
    """Connect to the cluster (or start a local one) unless this process already is; count one more user."""
    global _users, _owned
    import ray

    with _lock:
        if not ray.is_initialized():
            address = config.address or os.environ.get("RAY_ADDRESS")
            if address:
                options = {"address": address, "namespace": config.namespace}
            else:
                options = {
                    "num_cpus": config.num_cpus,
                    "object_store_memory": config.object_store_mb * 2**20,
                    "include_dashboard": False,
                    "namespace": config.namespace,
                }
            driver = SerialExecutor("ray-connection")
            try:
                driver.submit(functools.partial(ray.init, **options)).result()
            except BaseException:
                driver.close(0)
                raise
            _owned = driver
        _users += 1


def release() -> None:
    """One user fewer; the last one ends a connection this module made (and stops the local cluster it started)."""
    global _users, _owned
    import ray

    with _lock:
        _users = max(_users - 1, 0)
        if _users == 0 and _owned is not None:
            driver, _owned = _owned, None
            try:
                driver.submit(ray.shutdown).result()
            finally:
                driver.close(0)
