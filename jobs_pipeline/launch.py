"""Running a job in-process and reading its outcome: shared by the CLI and tests.

A job's result is read back from the `result` output metadata its op recorded,
so whoever launched the run sees exactly what the Dagster UI shows.
"""

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from sqlalchemy import Engine


class LaunchError(ValueError):
    """The launch request cannot be honoured (an option the job does not take, an unknown user)."""


@dataclass(frozen=True)
class LaunchPlan:
    """What to hand `execute_in_process` (or a run request) for one launch."""

    run_config: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)
    partition_key: str | None = None


def plan_launch(
    job: dg.JobDefinition,
    *,
    dry_run: bool = False,
    user: str | None = None,
    allow_large: bool = False,
    app_engine: Engine | None = None,
) -> LaunchPlan:
    """A partitioned job runs all its partitions in one run; `user` (only the rollup
    takes it) narrows the run to that user's shard and that user.
    """
    from jobs_pipeline.jobs.discipline_stats_rollup import find_user, shard_of

    extra: dict[str, Any] = {}
    if allow_large:
        if not takes_option(job, "allow_large"):
            raise LaunchError(
                f"--allow-large applies only to tier-expiration and promo-cleanup, not {job.name}"
            )
        extra["allow_large"] = True
    if user is not None:
        if not takes_option(job, "user"):
            raise LaunchError(f"--user applies only to discipline-stats-rollup, not {job.name}")
        assert app_engine is not None, "looking a user up needs the app database"
        with app_engine.connect() as connection:
            try:
                user_id = find_user(connection, user)
            except LookupError as missing:
                raise LaunchError(str(missing)) from None
        return LaunchPlan(
            run_config=op_config_for(job, dry_run=dry_run, user=str(user_id), **extra),
            partition_key=shard_of(user_id),
        )
    plan = LaunchPlan(run_config=op_config_for(job, dry_run=dry_run, **extra))
    if job.partitions_def is not None:
        keys = job.partitions_def.get_partition_keys()
        plan.tags.update(
            {
                "dagster/asset_partition_range_start": keys[0],
                "dagster/asset_partition_range_end": keys[-1],
            }
        )
    return plan


def op_config_for(job: dg.JobDefinition, **op_config: Any) -> dict[str, Any]:
    """Run config giving `op_config` to every op of the job that takes those keys
    (the job's own op or asset; not the asset checks Dagster adds beside it).
    """
    return {
        "ops": {
            node.name: {"config": op_config}
            for node in job.nodes_in_topological_order
            if set(op_config) <= set(config_fields(node.definition))
        }
    }


def takes_option(job: dg.JobDefinition, option: str) -> bool:
    return any(option in config_fields(node.definition) for node in job.nodes_in_topological_order)


def config_fields(definition: Any) -> dict[str, Any]:
    schema = definition.config_schema
    if schema is None:
        return {}
    return dict(getattr(schema.as_field().config_type, "fields", {}) or {})


def result_of(execution: dg.ExecuteInProcessResult) -> dict[str, Any] | None:
    """From an op's output, an asset's materialization, or a dry run's observation."""
    for event in execution.all_events:
        metadata: Any = {}
        if event.is_successful_output:
            metadata = event.step_output_data.metadata
        elif event.is_step_materialization:
            metadata = event.step_materialization_data.materialization.metadata
        elif event.event_type == dg.DagsterEventType.ASSET_OBSERVATION:
            metadata = event.asset_observation_data.asset_observation.metadata
        if "result" in metadata:
            return dict(metadata["result"].value)
    return None


def failure_message(execution: dg.ExecuteInProcessResult) -> str:
    """The first line of what made the run fail, without a stack trace."""
    return first_failure_line(execution.all_events)


def first_failure_line(events: Iterable[dg.DagsterEvent]) -> str:
    """A step's `Failure` description when there is one, else the innermost error of
    the first failed step or resource (a bad DATABASE_URL fails the resource), else
    the run's own failure message (a run stopped for exceeding its maximum runtime).
    """
    run_failure = ""
    for event in events:
        if event.is_step_failure:
            failure = event.step_failure_data
            if failure.user_failure_data is not None and failure.user_failure_data.description:
                return str(failure.user_failure_data.description)
            return innermost_message(failure.error)
        if event.event_type == dg.DagsterEventType.RESOURCE_INIT_FAILURE:
            return innermost_message(getattr(event.event_specific_data, "error", None))
        if event.event_type == dg.DagsterEventType.RUN_FAILURE and event.message:
            run_failure = run_failure or event.message.strip().splitlines()[0]
    return run_failure or "the run failed"


def innermost_message(error: Any) -> str:
    while error is not None and error.cause is not None:
        error = error.cause
    if error is None or not error.message.strip():
        return "the run failed"
    return str(error.message).strip().splitlines()[0]


TRIGGERED_BY_TAG = "jobs_pipeline/triggered_by"


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    success: bool
    result: dict[str, Any] | None
    error: str | None


def run_now(job: dg.JobDefinition, plan: LaunchPlan, *, triggered_by: str) -> RunOutcome:
    """Runs the job in this process, in the run history of `$DAGSTER_HOME`'s instance
    (a temporary one when it is unset), tagged with who triggered it.
    """
    instance = (
        dg.DagsterInstance.get()
        if os.environ.get("DAGSTER_HOME")
        else dg.DagsterInstance.ephemeral()
    )
    with instance:
        execution = job.execute_in_process(
            run_config=plan.run_config,
            instance=instance,
            raise_on_error=False,
            partition_key=plan.partition_key,
            tags={**plan.tags, TRIGGERED_BY_TAG: triggered_by},
        )
    return RunOutcome(
        run_id=execution.run_id,
        success=execution.success,
        result=result_of(execution) if execution.success else None,
        error=None if execution.success else failure_message(execution),
    )
