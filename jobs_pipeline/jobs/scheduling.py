"""How jobs are queued, watched and scheduled: priorities, one run at a time, time
limits, UTC schedules.
"""

from collections.abc import Mapping
from typing import Literal

import dagster as dg

Priority = Literal["high", "medium", "low"]

# Dagster's queue launches higher `dagster/priority` values first.
PRIORITY_TAG_VALUES: Mapping[Priority, int] = {"high": 10, "medium": 5, "low": 0}


# A run still going after this long alerts once (the original design's "> 5 minutes").
ALERT_AFTER_TAG = "jobs_pipeline/alert_after_seconds"
DEFAULT_ALERT_AFTER_SECONDS = 300
# Run monitoring (dagster.yaml) stops a run that goes on past this: a stuck run.
DEFAULT_MAX_RUNTIME_SECONDS = 1800


# An operators' tool, not a job run by name (`run`, `list`, the admin API leave it out):
# undo (its own command, never scheduled) and the evening forecast (its own schedule).
TOOL_TAG = "jobs_pipeline/tool"


def is_maintenance_job(job: dg.JobDefinition) -> bool:
    """A job users run by name: not Dagster's own (`__ASSET_JOB`), not a tool."""
    return not job.name.startswith("__") and job.tags.get(TOOL_TAG) != "true"


def job_tags(
    job_name: str,
    priority: Priority,
    *,
    alert_after_seconds: int = DEFAULT_ALERT_AFTER_SECONDS,
    max_runtime_seconds: int = DEFAULT_MAX_RUNTIME_SECONDS,
) -> dict[str, str]:
    """Tags the queue and the monitors read: priority, one run at a time per job
    (`job_lock`), when a slow run alerts, and when a stuck one is stopped.
    """
    if not 0 < alert_after_seconds < max_runtime_seconds:
        raise ValueError("a job's alert threshold must come before its maximum runtime")
    return {
        "dagster/priority": str(PRIORITY_TAG_VALUES[priority]),
        "priority": priority,
        "job_lock": job_name,
        ALERT_AFTER_TAG: str(alert_after_seconds),
        "dagster/max_runtime": str(max_runtime_seconds),
    }


def utc_schedule(job: dg.JobDefinition, cron: str) -> dg.ScheduleDefinition:
    """A schedule in UTC, running from the start (the daemon ticks it without a click)."""
    return dg.ScheduleDefinition(
        name=f"{job.name}_schedule",
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
