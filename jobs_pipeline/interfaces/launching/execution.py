"""A run started: submitted to the instance's queue (a daemon serves it), or executed in
this process (none does), tagged with who started it, its outcome read back.
"""

from __future__ import annotations

import contextlib
from typing import Any

import dagster as dg

from jobs_pipeline.dagster_private import in_process_workspace, submit_run
from jobs_pipeline.interfaces.launching.instance import DEFINITIONS_MODULE, LOCATION_NAME
from jobs_pipeline.interfaces.launching.plans import LaunchPlan
from jobs_pipeline.job_parts.results import result_of
from jobs_pipeline.runs.outcomes import (
    RunOutcome,
    first_failure_line,
    record_operator_stop,
    was_interrupted,
)
from jobs_pipeline.tags import TRIGGERED_BY_TAG


class RunQueue:
    """Submits runs to the instance's queue, as `dagster job launch` does.

    The code location is loaded in this process under the deployment's location name,
    so the daemon launches the run from its own copy of that location (a code server in
    a deployment). Dagster has no public Python API for this (see `dagster_private`).
    """

    def __init__(self, instance: dg.DagsterInstance):
        self.instance = instance
        self._stack = contextlib.ExitStack()
        self._workspace: Any = None

    def __enter__(self) -> RunQueue:
        self._workspace = self._stack.enter_context(
            in_process_workspace(self.instance, DEFINITIONS_MODULE, LOCATION_NAME)
        )
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self._stack.close()

    def submit(self, job_name: str, plan: LaunchPlan, *, triggered_by: str) -> str:
        """Creates the run with its job's tags and the plan's, queues it, returns its id."""
        tags = {**plan.tags, TRIGGERED_BY_TAG: triggered_by}
        return submit_run(
            self.instance, self._workspace, LOCATION_NAME, job_name, plan.run_config, tags
        )

    def cancel_if_queued(self, run_id: str) -> bool:
        """Takes a run that has not started off the queue; a started one goes on."""
        run = self.instance.get_run_by_id(run_id)
        if run is None or run.status != dg.DagsterRunStatus.QUEUED:
            return False
        return bool(self.instance.run_coordinator.cancel_run(run_id))


def execute_here(
    instance: dg.DagsterInstance,
    job: dg.JobDefinition,
    plan: LaunchPlan,
    *,
    triggered_by: str,
    run_id: str | None = None,
) -> RunOutcome:
    """Runs the job in this process, in the instance's history, tagged with who started it."""
    execution = job.execute_in_process(
        run_config=plan.run_config,
        instance=instance,
        raise_on_error=False,
        run_id=run_id,
        tags={**plan.tags, TRIGGERED_BY_TAG: triggered_by},
    )
    events = execution.all_events
    if execution.success:
        return RunOutcome(execution.run_id, "SUCCESS", result=result_of(events))
    if was_interrupted(events):
        record_operator_stop(instance, execution.run_id, triggered_by)
        raise KeyboardInterrupt  # the caller's Ctrl-C path takes it from here
    return RunOutcome(execution.run_id, "FAILURE", error=first_failure_line(events))
