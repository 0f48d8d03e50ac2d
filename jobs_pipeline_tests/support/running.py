"""Runs a job for real (a real Dagster instance, a real database) and reads what it logged."""

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg

from jobs_pipeline.interfaces.launching.plans import op_config_for
from jobs_pipeline.job_parts.results import result_of
from jobs_pipeline.monitoring.monitoring import run_failure_alert_sensor
from jobs_pipeline.resources.alerting import AlertChannels
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.runs.outcomes import first_failure_line

# The in-process runs of the tests capture no compute logs: nothing reads them, and
# Dagster's capture starts two processes per step (`tail -F` and its watcher), some of
# which outlived their runs inside the test process on a machine with both cores busy.
NO_COMPUTE_LOGS = {
    "compute_logs": {
        "module": "dagster._core.storage.noop_compute_log_manager",
        "class": "NoOpComputeLogManager",
    }
}


@contextmanager
def temporary_instance(**kwargs: Any) -> Iterator[dg.DagsterInstance]:
    """A real Dagster instance on a temporary folder, for runs in the test's own process."""
    overrides = {**NO_COMPUTE_LOGS, **kwargs.pop("overrides", {})}
    with dg.instance_for_test(overrides=overrides, **kwargs) as instance:
        yield instance


def run_job(
    job: dg.JobDefinition,
    db: AppDatabase,
    instance: dg.DagsterInstance,
    **op_config: Any,
) -> dg.ExecuteInProcessResult:
    return job.execute_in_process(
        run_config=op_config_for(job, **op_config),
        resources={"db": db},
        instance=instance,
        raise_on_error=False,
    )


def log_messages(instance: dg.DagsterInstance, execution: dg.ExecuteInProcessResult) -> list[str]:
    """Every user-level log message the run wrote to the instance's event log."""
    records = instance.all_logs(execution.run_id)
    return [
        record.user_message
        for record in records
        if record.dagster_event is None and record.user_message
    ]


def job_result(execution: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """The result a successful run recorded; a run that recorded none fails the test."""
    result = result_of(execution.all_events)
    assert result is not None, f"run {execution.run_id} recorded no result"
    return result


def failure_message(execution: dg.ExecuteInProcessResult) -> str:
    """The first line of what made the run fail, as the CLI and the API report it."""
    return first_failure_line(execution.all_events)


def evaluate_failure_alert(
    instance: dg.DagsterInstance, run: dg.DagsterRun, channels: AlertChannels
) -> None:
    """The failure alert sensor on the run's failure event, as the daemon evaluates it."""
    (failure,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert failure.dagster_event is not None
    with dg.build_run_status_sensor_context(
        sensor_name=run_failure_alert_sensor.name,
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=failure.dagster_event,
        resources={"alerts": channels},
    ) as context:
        run_failure_alert_sensor(context.for_run_failure())


def result_of_run(completed: subprocess.CompletedProcess[str], name: str) -> dict[str, Any]:
    """The JSON of the `[name] Result: {...}` line, which must be stdout's last line."""
    lines = completed.stdout.strip().splitlines()
    assert lines, f"no stdout; stderr:\n{completed.stderr[-3000:]}"
    prefix = f"[{name}] Result: "
    assert lines[-1].startswith(prefix), completed.stdout
    return json.loads(lines[-1].removeprefix(prefix))
