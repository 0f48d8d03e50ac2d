"""Each run in a container of its own: Dagster's `DockerRunLauncher`, plus the project's
watch on each run's worker.

Docker answers for a container it knows: one that exited or was killed fails its run at
the next check. When Docker cannot answer (its daemon restarting, its host unreachable)
or says the container runs, the run's sign of life decides, as for a run in a code
server's worker (`jobs_pipeline.runs.workers`).
"""

from __future__ import annotations

import os
from typing import Any

from dagster_docker import DockerRunLauncher
from dagster_docker.utils import DOCKER_CONFIG_SCHEMA

from jobs_pipeline.runs.workers import (
    DEFAULT_WORKER_GONE_AFTER_SECONDS,
    WORKER_GONE_FIELD,
    ChecksItsWorkersToo,
    WorkerWatch,
)

# Every setting a run reads from its environment (the code's EnvVars, Dagster's storage):
# each one set in the daemon's environment is given to the run's container. Docker's own
# launcher refuses to launch when a variable it is told to pass is unset.
RUN_SETTINGS = (
    "DATABASE_URL",
    "DAGSTER_POSTGRES_URL",
    "SMTP_HOST",
    "SMTP_PORT",
    "SMTP_USERNAME",
    "SMTP_PASSWORD",
    "SMTP_FROM",
    "SMTP_STARTTLS",
    "ALERT_EMAIL_TO",
    "ALERT_WEBHOOK_URL",
    "DAGSTER_WEBSERVER_URL",
    "HEARTBEAT_URL",
)


class ContainerRunLauncher(ChecksItsWorkersToo, DockerRunLauncher):
    def __init__(
        self,
        inst_data: Any = None,
        worker_gone_after_seconds: int = DEFAULT_WORKER_GONE_AFTER_SECONDS,
        env_vars: list[str] | None = None,
        **docker_config: Any,
    ):
        configured = list(env_vars or [])
        given = [name for name in RUN_SETTINGS if name in os.environ and name not in configured]
        super().__init__(inst_data=inst_data, env_vars=configured + given, **docker_config)
        self._watch = WorkerWatch(worker_gone_after_seconds)

    @classmethod
    def config_type(cls) -> Any:
        return {**DOCKER_CONFIG_SCHEMA, **WORKER_GONE_FIELD}
