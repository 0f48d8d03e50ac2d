"""Whole runs executed by a fleet of workers on any number of hosts, pulling from one
queue: `dagster-celery`'s `CeleryRunLauncher` (Redis as broker and result store), plus
the project's watch on each run's worker.

Celery knows a task succeeded or failed, but a worker killed whole (its host gone, the
OOM killer, SIGKILL) leaves its task STARTED in the result store for good, and Celery's
own answer would keep the run STARTED with it. The run's sign of life, held by the
worker's process on Dagster's storage database (`jobs_pipeline.runs.workers`), goes
with the process: the run is failed once it has been missing for
`worker_gone_after_seconds`, its slot and writer lock are free, and the next run does the
rest. A task Celery hands out again is ignored by Dagster unless its run is still
starting, so a run never executes twice at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from dagster_celery.launcher import CeleryRunLauncher

from jobs_pipeline.runs.workers import (
    DEFAULT_WORKER_GONE_AFTER_SECONDS,
    WORKER_GONE_FIELD,
    ChecksItsWorkersToo,
    WorkerWatch,
)


class FleetRunLauncher(ChecksItsWorkersToo, CeleryRunLauncher):
    def __init__(
        self,
        default_queue: str,
        worker_gone_after_seconds: int = DEFAULT_WORKER_GONE_AFTER_SECONDS,
        **celery_config: Any,
    ):
        super().__init__(default_queue=default_queue, **celery_config)
        self._watch = WorkerWatch(worker_gone_after_seconds)

    @classmethod
    def config_type(cls) -> Any:
        celery_fields = cast("Mapping[str, Any]", CeleryRunLauncher.config_type())
        return {**celery_fields, **WORKER_GONE_FIELD}
