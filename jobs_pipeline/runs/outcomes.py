"""A run's outcome as whoever started it sees it: its result, or its first error.

Read back from the instance, so the CLI, the admin API and the alerts say exactly what
the Dagster UI shows.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dagster as dg

from jobs_pipeline.dagster_private import was_unexpected_termination
from jobs_pipeline.job_parts.results import result_of

# How often a waiting caller reads the run again.
POLL_SECONDS = 0.5


def first_failure_line(events: Iterable[dg.DagsterEvent]) -> str:
    """A step's `Failure` description when there is one, else the innermost error of
    the first failed step or resource (a bad DATABASE_URL fails the resource), else
    the run's own failure message (a run stopped for exceeding its maximum runtime).
    """
    run_failure = crash = ""
    for event in events:
        if is_crash_explanation(event):
            crash = crash or crash_explanation(event)
        if event.is_step_failure:
            failure = event.step_failure_data
            if failure.user_failure_data is not None and failure.user_failure_data.description:
                return str(failure.user_failure_data.description)
            return innermost_message(failure.error)
        if event.event_type == dg.DagsterEventType.RESOURCE_INIT_FAILURE:
            return innermost_message(getattr(event.event_specific_data, "error", None))
        if event.event_type in RUN_ENDED_BADLY and event.message:
            run_failure = run_failure or event.message.strip().splitlines()[0]
    return crash or run_failure or "the run failed"


RUN_ENDED_BADLY = (dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.RUN_CANCELED)
# What the code server records when a run's process died under it: "[DagsterApiServer] Run
# execution process for <run id> was terminated by signal 9 (SIGKILL)." (the run's failure
# itself only says it "has been marked as failed from outside the execution context").
CRASH_PREFIX = "Run execution process for"


def is_crash_explanation(event: dg.DagsterEvent) -> bool:
    return event.event_type == dg.DagsterEventType.ENGINE_EVENT and (
        crash_explanation(event).startswith(CRASH_PREFIX)
    )


def crash_explanation(event: dg.DagsterEvent) -> str:
    """The event's first line without the "[ClassName] " Dagster puts before it."""
    lines = (event.message or "").strip().splitlines()
    first = lines[0] if lines else ""
    return first.split("] ", 1)[1] if first.startswith("[") and "] " in first else first


def record_operator_stop(instance: dg.DagsterInstance, run_id: str, who: str) -> None:
    """Marks a run its operator stopped (Ctrl-C, SIGTERM) as canceled, as Dagster does a
    run terminated from the UI: it was stopped on purpose, it did not fail. Dagster has
    already recorded it as failed, interrupted (nothing marks an in-process run
    canceling before its own handler takes the signal), so the failure alert skips a
    run whose status is no longer FAILURE.
    """
    run = instance.get_run_by_id(run_id)
    if run is not None:
        instance.report_run_canceled(
            run, message=f"Stopped midway by {who} (Ctrl-C or SIGTERM) in its own process."
        )


def was_interrupted(events: Iterable[dg.DagsterEvent]) -> bool:
    """The run failed because its process was interrupted (Ctrl-C, SIGTERM), not its code."""
    return any(was_unexpected_termination(event) for event in events)


def innermost_message(error: Any) -> str:
    while error is not None and error.cause is not None:
        error = error.cause
    if error is None or not error.message.strip():
        return "the run failed"
    return str(error.message).strip().splitlines()[0]


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    status: str
    result: dict[str, Any] | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def success(self) -> bool:
        return self.status == dg.DagsterRunStatus.SUCCESS.value


FINISHED_STATUSES = {
    dg.DagsterRunStatus.SUCCESS.value,
    dg.DagsterRunStatus.FAILURE.value,
    dg.DagsterRunStatus.CANCELED.value,
}


def outcome_of(instance: dg.DagsterInstance, run_id: str) -> RunOutcome | None:
    """Where the run stands; its result or first error once it has finished."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return None
    status = run.status.value
    if status not in FINISHED_STATUSES:
        return RunOutcome(run_id=run_id, status=status)
    events = [record.dagster_event for record in instance.all_logs(run_id) if record.dagster_event]
    if status == dg.DagsterRunStatus.SUCCESS.value:
        return RunOutcome(run_id=run_id, status=status, result=result_of(events))
    return RunOutcome(run_id=run_id, status=status, error=first_failure_line(events))


def wait_for_outcome(
    instance: dg.DagsterInstance, run_id: str, *, timeout_seconds: float | None = None
) -> RunOutcome:
    """The run's outcome once it has finished, or where it stands at the timeout."""
    give_up = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    while True:
        outcome = outcome_of(instance, run_id)
        if outcome is None:
            raise LookupError(f"run {run_id} is not in the instance")
        if outcome.finished or (give_up is not None and time.monotonic() >= give_up):
            return outcome
        time.sleep(POLL_SECONDS)


# -- the instance ---------------------------------------------------------------------------
