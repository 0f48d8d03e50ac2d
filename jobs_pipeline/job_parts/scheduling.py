"""How jobs are queued, watched and scheduled: priorities, one run at a time, time
limits, UTC schedules.
"""

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal

import dagster as dg

from jobs_pipeline.dagster_private import cron_ticks
from jobs_pipeline.tags import (
    ALERT_AFTER_TAG,
    ALERT_WAITING_AFTER_TAG,
    JOB_LOCK_TAG,
    MAX_RUNTIME_TAG,
    PRIORITY_TAG,
    TOOL_TAG,
)

Priority = Literal["high", "medium", "low"]

# Dagster's queue launches higher `dagster/priority` values first.
PRIORITY_TAG_VALUES: Mapping[Priority, int] = {"high": 10, "medium": 5, "low": 0}


def priority_of(tags: Mapping[str, str]) -> Priority | None:
    """The priority a job's `dagster/priority` tag stands for, as the CLI and API name it."""
    value = tags.get(PRIORITY_TAG)
    return next(
        (name for name, number in PRIORITY_TAG_VALUES.items() if str(number) == value), None
    )


# A run still going after this long alerts once ("> 5 minutes" in the jobs' rules).
DEFAULT_ALERT_AFTER_SECONDS = 300
# Run monitoring (dagster.yaml) stops a run that goes on past this: a stuck run.
DEFAULT_MAX_RUNTIME_SECONDS = 1800
# A run still waiting for its turn (queued, or for a pool's slot) after this long alerts once.
DEFAULT_ALERT_WAITING_AFTER_SECONDS = 900


def waiting_alert_after(tags: Mapping[str, str]) -> float:
    """A run's own waiting limit (its job's tag, or one given at launch), else 15 minutes;
    a backfill's runs (Dagster's asset job) carry no job tags and get the default.
    """
    try:
        return float(tags.get(ALERT_WAITING_AFTER_TAG) or DEFAULT_ALERT_WAITING_AFTER_SECONDS)
    except ValueError:
        return DEFAULT_ALERT_WAITING_AFTER_SECONDS


def is_maintenance_job(job: dg.JobDefinition) -> bool:
    """A job users run by name: not Dagster's own (`__ASSET_JOB`), not an operators' tool
    (undo, its own command; the forecast, its own schedule), which `run`, `list` and the
    admin API leave out.
    """
    return not job.name.startswith("__") and job.tags.get(TOOL_TAG) != "true"


def job_tags(
    job_name: str,
    priority: Priority,
    *,
    alert_after_seconds: int = DEFAULT_ALERT_AFTER_SECONDS,
    max_runtime_seconds: int = DEFAULT_MAX_RUNTIME_SECONDS,
    alert_waiting_after_seconds: int = DEFAULT_ALERT_WAITING_AFTER_SECONDS,
) -> dict[str, str]:
    """Tags the queue and the monitors read: priority, one run at a time per job
    (`job_lock`), when a slow run alerts, when a stuck one is stopped, and when one still
    waiting for its turn alerts.
    """
    if not 0 < alert_after_seconds < max_runtime_seconds:
        raise ValueError("a job's alert threshold must come before its maximum runtime")
    return {
        PRIORITY_TAG: str(PRIORITY_TAG_VALUES[priority]),
        JOB_LOCK_TAG: job_name,
        ALERT_AFTER_TAG: str(alert_after_seconds),
        MAX_RUNTIME_TAG: str(max_runtime_seconds),
        ALERT_WAITING_AFTER_TAG: str(alert_waiting_after_seconds),
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


def schedules_by_job(defs: dg.Definitions) -> dict[str, dg.ScheduleDefinition]:
    """Dagster job name -> its schedule, for the jobs that have one."""
    return {
        schedule.job_name: schedule
        for schedule in defs.schedules or []
        if isinstance(schedule, dg.ScheduleDefinition)
    }


def next_tick(schedule: dg.ScheduleDefinition, now: datetime) -> datetime:
    """The schedule's first tick strictly after `now`, in UTC (Dagster's own cron reading)."""
    ticks = cron_ticks(now, str(schedule.cron_schedule), schedule.execution_timezone)
    return next(tick for tick in ticks if tick > now).astimezone(UTC)


def schedule_interval_seconds(schedule: dg.ScheduleDefinition) -> float:
    """The time between two ticks (the schedules here tick at a fixed interval)."""
    first = next_tick(schedule, datetime.now(UTC))
    return (next_tick(schedule, first) - first).total_seconds()


# A scheduled job may run late (it waits for its turn, or retries) by half its interval,
# and by at least 15 minutes, before its missing success is a fault.
MIN_SUCCESS_SLACK_SECONDS = 900


def success_overdue_after(schedule: dg.ScheduleDefinition) -> float:
    """How long after its last success a scheduled job's next one is overdue."""
    interval = schedule_interval_seconds(schedule)
    return interval + max(interval / 2, MIN_SUCCESS_SLACK_SECONDS)
