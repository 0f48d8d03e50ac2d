"""The Dagster instance a start goes through, opened with its pools' limits in place, and
whether a daemon takes its queue.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import dagster as dg

from jobs_pipeline.definitions import defs
from jobs_pipeline.runs.status import QUEUE_DAEMON, job_pools

DEFINITIONS_MODULE = "jobs_pipeline.definitions"
# The code location's name in every workspace (workspace.yaml, a deployment's).
LOCATION_NAME = "jobs_pipeline"

# The queue's daemon writes a heartbeat every 30 s or so; one older than this is a
# daemon that is not running.
DAEMON_HEARTBEAT_FRESH_SECONDS = 90


@contextlib.contextmanager
def open_instance() -> Iterator[dg.DagsterInstance]:
    """`$DAGSTER_HOME`'s instance, or a temporary one (no history) when it is unset."""
    instance = (
        dg.DagsterInstance.get()
        if os.environ.get("DAGSTER_HOME")
        else dg.DagsterInstance.ephemeral()
    )
    with instance:
        prepare_pools(instance)
        yield instance


def project_pools() -> list[str]:
    """Every concurrency pool the project's ops name."""
    return job_pools(defs.resolve_all_job_defs())


def prepare_pools(instance: dg.DagsterInstance) -> None:
    """Creates each pool's limit row (dagster.yaml's default) before runs claim slots:
    two runs creating the same row at once on a fresh storage would crash one of them.
    A limit an operator has set (`dagster instance concurrency set`) is kept.
    """
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits or instance.is_ephemeral:
        return
    known = {limit.name for limit in storage.get_pool_limits()}
    for pool in project_pools():
        if pool not in known:
            with contextlib.suppress(Exception):  # another process created it first
                storage.initialize_concurrency_limit_to_default(pool)


def daemon_serves(instance: dg.DagsterInstance) -> bool:
    """Whether a daemon takes this instance's queued runs: a queue, and a fresh heartbeat."""
    if instance.is_ephemeral or not isinstance(instance.run_coordinator, dg.QueuedRunCoordinator):
        return False
    heartbeat = instance.get_daemon_heartbeats().get(QUEUE_DAEMON)
    return heartbeat is not None and time.time() - heartbeat.timestamp < (
        DAEMON_HEARTBEAT_FRESH_SECONDS
    )
