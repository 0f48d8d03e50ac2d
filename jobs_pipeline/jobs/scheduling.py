"""How jobs are queued and scheduled: priorities, one run at a time, UTC schedules."""

from collections.abc import Mapping
from typing import Literal

import dagster as dg

Priority = Literal["high", "medium", "low"]

# Dagster's queue launches higher `dagster/priority` values first.
PRIORITY_TAG_VALUES: Mapping[Priority, int] = {"high": 10, "medium": 5, "low": 0}


def job_tags(job_name: str, priority: Priority) -> dict[str, str]:
    """Tags that the queue reads: priority, and one run at a time per job (`job_lock`)."""
    return {
        "dagster/priority": str(PRIORITY_TAG_VALUES[priority]),
        "priority": priority,
        "job_lock": job_name,
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
