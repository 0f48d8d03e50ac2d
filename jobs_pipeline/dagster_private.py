"""Every call this project makes into Dagster's private modules (`dagster._...`), in one place.

Dagster has no public API for these: queueing a run from Python as `dagster job launch`
does, asking a code server whether it loads, a run launcher's health answer, its cron
reading, the ids the UI gives schedules' and sensors' states. They may change in any
release: `test_dagster_private.py` calls each one against the Dagster installed, so an
upgrade that breaks one fails there, by name.
Written against Dagster 1.13.27.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import dagster as dg
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.events import RunFailureReason
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.remote_representation.handle import CompoundID

# Dagster's own run tags, as Dagster spells them (`jobs_pipeline/tags.py` names them all).
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG as ASSET_PARTITION_RANGE_END_TAG,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_START_TAG as ASSET_PARTITION_RANGE_START_TAG,
)
from dagster._core.storage.tags import BACKFILL_ID_TAG as BACKFILL_ID_TAG
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._core.storage.tags import PARTITION_NAME_TAG as PARTITION_NAME_TAG
from dagster._core.storage.tags import PRIORITY_TAG as PRIORITY_TAG
from dagster._core.storage.tags import SCHEDULE_NAME_TAG as SCHEDULE_NAME_TAG
from dagster._core.storage.tags import SENSOR_NAME_TAG as SENSOR_NAME_TAG
from dagster._core.storage.tags import WILL_RETRY_TAG as WILL_RETRY_TAG
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._grpc.client import DagsterGrpcClient
from dagster._serdes import deserialize_value
from dagster._utils.error import SerializableErrorInfo
from dagster._utils.schedules import cron_string_iterator

# The tag Dagster's DefaultRunLauncher puts on each run it launched: its code server.
CODE_SERVER_TAG = GRPC_INFO_TAG


@contextmanager
def in_process_workspace(
    instance: dg.DagsterInstance, module_name: str, location_name: str
) -> Iterator[Any]:
    """The code location loaded in this process under the deployment's location name, so
    the daemon launches a run from its own copy of that location (its code server).
    """
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name=module_name),
        location_name=location_name,
    )
    with WorkspaceProcessContext(
        instance, InProcessWorkspaceLoadTarget([origin]), version=dg.__version__, read_only=False
    ) as workspace:
        yield workspace


def submit_run(
    instance: dg.DagsterInstance,
    workspace: Any,
    location_name: str,
    job_name: str,
    run_config: Mapping[str, Any],
    tags: Mapping[str, str],
) -> str:
    """Creates the run with its job's own tags and `tags`, queues it, returns its id: the
    calls Dagster's own `dagster job launch` makes.
    """
    request = workspace.create_request_context()
    location = request.get_code_location(location_name)
    (repository,) = location.get_repositories().values()
    job = location.get_job(
        JobSubsetSelector(
            location_name=location_name,
            repository_name=repository.name,
            job_name=job_name,
            op_selection=None,
        )
    )
    plan_snapshot = location.get_execution_plan(
        job, dict(run_config), step_keys_to_execute=None, known_state=None, instance=instance
    ).execution_plan_snapshot
    run = instance.create_run(
        job_name=job_name,
        run_id=None,
        run_config=dict(run_config),
        resolved_op_selection=None,
        step_keys_to_execute=plan_snapshot.step_keys_to_execute,
        op_selection=None,
        status=None,
        root_run_id=None,
        parent_run_id=None,
        tags={**job.tags, **tags},
        job_snapshot=job.job_snapshot,
        execution_plan_snapshot=plan_snapshot,
        parent_job_snapshot=job.parent_job_snapshot,
        remote_job_origin=job.get_remote_origin(),
        job_code_origin=job.get_python_origin(),
        asset_selection=None,
        asset_check_selection=None,
        asset_graph=repository.asset_graph,
    )
    return str(instance.submit_run(run.run_id, request).run_id)


def was_unexpected_termination(event: dg.DagsterEvent) -> bool:
    """A run failure because its process was interrupted (Ctrl-C, SIGTERM), not its code."""
    return (
        event.event_type == dg.DagsterEventType.RUN_FAILURE
        and getattr(event.event_specific_data, "failure_reason", None)
        == RunFailureReason.UNEXPECTED_TERMINATION
    )


def worker_health(running: bool, message: str) -> CheckRunHealthResult:
    """A run launcher's answer to Dagster's run monitoring about one run's worker."""
    return CheckRunHealthResult(WorkerStatus.RUNNING if running else WorkerStatus.FAILED, message)


def worker_health_settled(answer: CheckRunHealthResult) -> bool:
    """Whether a launcher's own health answer ends the question: its worker succeeded,
    failed or is known to be gone; anything else (running, unknown) may hide a dead worker.
    """
    return answer.status in (WorkerStatus.SUCCESS, WorkerStatus.FAILED, WorkerStatus.NOT_FOUND)


def code_server_load_error(host: str, port: int) -> str | None:
    """None when the code server at host:port lists its repository; else the first line of
    its load error. Raises when it does not answer. These are the calls Dagster's own
    `dagster api grpc-health-check` and webserver make.
    """
    answer = deserialize_value(DagsterGrpcClient(host=host, port=port).list_repositories())
    if isinstance(answer, SerializableErrorInfo):
        return answer.message.strip().splitlines()[0]
    return None


def cron_ticks(start: datetime, cron: str, timezone: str | None) -> Iterator[datetime]:
    """A schedule's ticks from `start` on, read the way Dagster's scheduler reads its cron."""
    return cron_string_iterator(start.timestamp(), cron, timezone)


def instigator_origin_id(state_id: str) -> str:
    """The origin id of the schedule or sensor a UI names by its state's id: Dagster's
    compound id (origin id and selector id), or an older UI's origin id alone.
    """
    if CompoundID.is_valid_string(state_id):
        return str(CompoundID.from_string(state_id).remote_origin_id)
    return state_id
