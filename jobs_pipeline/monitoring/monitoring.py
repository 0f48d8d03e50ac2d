"""The sensors that watch every job's runs and alert operators.

- `run_failure_alert_sensor`: each failed run (its final attempt) alerts once.
- `alert_redelivery_sensor`: a channel that was down gets the alert when it is back;
  and a failed run no sensor has alerted yet (within the last 24 hours) is alerted.
  That catches up what `run_failure_alert_sensor` never sees: its first tick after a
  fresh start sets its cursor to the latest failure, so runs that failed before it
  (e.g. between a deployment's start and that tick) would otherwise never alert.
- `long_running_run_sensor`: a run still going past its job's threshold alerts once
  (5 minutes by default); `dagster/max_runtime` stops a stuck run.
- `failure_rate_sensor`: a job whose failed runs exceed 10% of its runs in the
  trailing 24 hours alerts once per job per 24-hour window.
- `heartbeat_sensor`: each successful scheduled run pings `HEARTBEAT_URL` once (a dead
  man's switch: the outside service alerts when the pings stop, daemon down included).
- `waiting_run_sensor`: a run still waiting for its turn (QUEUED, or started with its step
  waiting for a pool's slot) past its job's limit (15 minutes) alerts once, naming what
  it waits for: the run ahead of it, the pool and the run holding it, or the queue's limit.
"""

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from jobs_pipeline.formats import elapsed, iso_utc
from jobs_pipeline.job_parts.scheduling import DEFAULT_ALERT_AFTER_SECONDS, waiting_alert_after
from jobs_pipeline.resources.alerting import (
    Alert,
    AlertChannels,
    deliver,
    deliver_for_run,
    delivered_on_run,
    pending_channels,
)
from jobs_pipeline.resources.heartbeats import Heartbeats
from jobs_pipeline.runs.outcomes import first_failure_line
from jobs_pipeline.runs.status import job_pools, read_pools, waiting_runs
from jobs_pipeline.tags import (
    ALERT_AFTER_TAG,
    DRY_RUN_TAG,
    HEARTBEAT_PINGED_TAG,
    SCHEDULE_TAG,
    WILL_RETRY_TAG,
)

FAILED = "failed"
STILL_RUNNING = "still running"
FAILURE_RATE = "failure rate"
WAITING = "waiting"

FAILURE_RATE_THRESHOLD = 0.10
FAILURE_RATE_WINDOW = timedelta(hours=24)
REDELIVERY_HORIZON = timedelta(days=2)
CATCH_UP_HORIZON = timedelta(hours=24)

FAILURE_EVENTS = {
    dg.DagsterEventType.STEP_FAILURE,
    dg.DagsterEventType.RESOURCE_INIT_FAILURE,
    dg.DagsterEventType.RUN_FAILURE,
    # Where the code server says how a run's process died (killed, out of memory).
    dg.DagsterEventType.ENGINE_EVENT,
}


def failure_alert(
    instance: dg.DagsterInstance, run: dg.DagsterRun, channels: AlertChannels
) -> Alert:
    records = instance.all_logs(run.run_id, of_type=FAILURE_EVENTS)
    events = [record.dagster_event for record in records if record.dagster_event is not None]
    failures = [r for r in records if r.dagster_event_type != dg.DagsterEventType.ENGINE_EVENT]
    failed_at = failures[-1].timestamp if failures else time.time()
    return Alert(
        kind=FAILED,
        job_name=run.job_name,
        headline=first_failure_line(events),
        at=datetime.fromtimestamp(failed_at, UTC),
        link=channels.run_link(run.run_id),
        run_id=run.run_id,
    )


def is_final_attempt(run: dg.DagsterRun) -> bool:
    """A run Dagster will re-execute is not the last word: alert on the final failure only."""
    return run.tags.get(WILL_RETRY_TAG, "false").lower() != "true"


@dg.run_failure_sensor(
    name="run_failure_alert_sensor",
    description="Alerts once per failed run, on every configured channel and in the log.",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
def run_failure_alert_sensor(context: dg.RunFailureSensorContext, alerts: AlertChannels) -> None:
    run = context.dagster_run
    # Canceled since it failed: a CLI run its operator stopped midway (launching/execution.py).
    if not is_final_attempt(run) or run.status != dg.DagsterRunStatus.FAILURE:
        return
    alert = failure_alert(context.instance, run, alerts)
    deliver_for_run(context.instance, run, alert, alerts, context.log.error)


def never_alerted(record: dg.RunRecord, since: datetime) -> bool:
    """A failed run (its final attempt) that ended after `since` and no sensor has alerted:
    the run tags say what was delivered, so a run alerted on any channel is not one. (A
    run with no end time is within the query's `updated_after` bound: it counts.)
    """
    run = record.dagster_run
    recent = record.end_time is None or record.end_time >= since.timestamp()
    return recent and is_final_attempt(run) and not delivered_on_run(run, FAILED)


@dg.sensor(
    name="alert_redelivery_sensor",
    description=(
        "Delivers a failed run's alert on the channels that were down when it failed, and"
        " alerts failed runs of the last 24 hours that no sensor has alerted yet."
    ),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
)
def alert_redelivery_sensor(context: dg.SensorEvaluationContext, alerts: AlertChannels) -> None:
    now = datetime.now(UTC)
    records = context.instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.FAILURE], updated_after=now - REDELIVERY_HORIZON
        )
    )
    for record in records:
        run = record.dagster_run
        if never_alerted(record, now - CATCH_UP_HORIZON):
            alert = failure_alert(context.instance, run, alerts)
            deliver_for_run(context.instance, run, alert, alerts, context.log.error)
        elif pending_channels(run, FAILED, alerts):
            alert = failure_alert(context.instance, run, alerts)
            deliver_for_run(context.instance, run, alert, alerts, context.log.warning)


@dg.sensor(
    name="long_running_run_sensor",
    description="Alerts once when a run is still going past its job's threshold (5 minutes).",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
)
def long_running_run_sensor(context: dg.SensorEvaluationContext, alerts: AlertChannels) -> None:
    now = time.time()
    records = context.instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
    )
    for record in records:
        run = record.dagster_run
        if ALERT_AFTER_TAG not in run.tags or record.start_time is None:
            continue
        threshold = int(run.tags.get(ALERT_AFTER_TAG) or DEFAULT_ALERT_AFTER_SECONDS)
        running_for = now - record.start_time
        if running_for <= threshold:
            continue
        done = delivered_on_run(run, STILL_RUNNING)
        if done and not pending_channels(run, STILL_RUNNING, alerts):
            continue
        alert = Alert(
            kind=STILL_RUNNING,
            job_name=run.job_name,
            headline=(
                f"running for {elapsed(running_for)}, past its {elapsed(threshold)} threshold"
            ),
            at=datetime.fromtimestamp(now, UTC),
            link=alerts.run_link(run.run_id),
            run_id=run.run_id,
        )
        deliver_for_run(context.instance, run, alert, alerts, context.log.warning)


@dg.sensor(
    name="waiting_run_sensor",
    description=(
        "Alerts once when a run has waited for its turn (queued, or for a pool's slot) past"
        " its job's limit (15 minutes), naming what it waits for."
    ),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
def waiting_run_sensor(context: dg.SensorEvaluationContext, alerts: AlertChannels) -> None:
    now = time.time()
    pools = read_pools(context.instance, job_pools(repository_of(context).get_all_jobs()))
    for waiting in waiting_runs(context.instance, pools, now):
        run = waiting.run
        limit = waiting_alert_after(run.tags)
        if waiting.waited(now) <= limit:
            continue
        if delivered_on_run(run, WAITING) and not pending_channels(run, WAITING, alerts):
            continue
        alert = Alert(
            kind=WAITING,
            job_name=run.job_name,
            headline=(
                f"waiting for {elapsed(waiting.waited(now))} (its limit is"
                f" {elapsed(limit)}) for {waiting.waits_for}"
            ),
            at=datetime.fromtimestamp(now, UTC),
            link=alerts.run_link(run.run_id),
            run_id=run.run_id,
        )
        deliver_for_run(context.instance, run, alert, alerts, context.log.warning)


# A ping later than this says nothing an outside service still wants to hear.
HEARTBEAT_HORIZON = timedelta(hours=1)


def owes_a_ping(run: dg.DagsterRun) -> bool:
    """A scheduled, real (not dry) run that has not pinged yet."""
    tags = run.tags
    return (
        SCHEDULE_TAG in tags
        and tags.get(DRY_RUN_TAG) != "true"
        and HEARTBEAT_PINGED_TAG not in tags
    )


@dg.sensor(
    name="heartbeat_sensor",
    description=(
        "Pings HEARTBEAT_URL once for each successful scheduled run, so an outside service"
        " alerts when the runs (or the daemon) stop."
    ),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
def heartbeat_sensor(context: dg.SensorEvaluationContext, heartbeats: Heartbeats) -> None:
    if not heartbeats.configured:
        return
    now = datetime.now(UTC)
    records = context.instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.SUCCESS], updated_after=now - HEARTBEAT_HORIZON
        )
    )
    for record in records:
        run = record.dagster_run
        if not owes_a_ping(run):
            continue
        try:
            heartbeats.ping(run.job_name)
        except Exception as error:  # the service is down: the next evaluation tries again
            context.log.warning(
                f"Heartbeat for {run.job_name} (run {run.run_id}) failed, to be retried:"
                f" {type(error).__name__}"
            )
            continue
        context.instance.add_run_tags(run.run_id, {HEARTBEAT_PINGED_TAG: iso_utc(now)})


def job_names_watched(context: dg.SensorEvaluationContext) -> list[str]:
    return sorted(
        job.name for job in repository_of(context).get_all_jobs() if not job.name.startswith("__")
    )


def repository_of(context: dg.SensorEvaluationContext) -> dg.RepositoryDefinition:
    """The code location a sensor watches (the daemon always evaluates it in one)."""
    if context.repository_def is None:
        raise RuntimeError(f"sensor {context.sensor_name} was evaluated outside a code location")
    return context.repository_def


def failure_rate(instance: dg.DagsterInstance, job_name: str, since: datetime) -> tuple[int, int]:
    """(failed, finished) runs of a job since `since`."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=job_name,
            statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE],
            created_after=since,
        )
    )
    failed = sum(1 for r in records if r.dagster_run.status == dg.DagsterRunStatus.FAILURE)
    return failed, len(records)


def current_window(
    state: dict[str, dict[str, Any]], job_name: str, now: datetime
) -> dict[str, Any]:
    """The job's alert window: the open one, or a new one once the last is 24 hours old."""
    window = state.get(job_name)
    age = now.timestamp() - window["opened"] if window else None
    if window is None or age is None or age >= FAILURE_RATE_WINDOW.total_seconds():
        window = {"opened": now.timestamp(), "channels": []}
        state[job_name] = window
    return window


@dg.sensor(
    name="failure_rate_sensor",
    description="Alerts once per job per 24 hours when over 10% of its runs failed.",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=300,
)
def failure_rate_sensor(context: dg.SensorEvaluationContext, alerts: AlertChannels) -> None:
    """The cursor holds, per job, when its current window's alert opened and which
    channels got it: `{"job": {"opened": <epoch>, "channels": ["log", "email"]}}`.
    """
    state: dict[str, dict[str, Any]] = json.loads(context.cursor) if context.cursor else {}
    now = datetime.now(UTC)
    for job_name in job_names_watched(context):
        failed, finished = failure_rate(context.instance, job_name, now - FAILURE_RATE_WINDOW)
        if not finished or failed / finished <= FAILURE_RATE_THRESHOLD:
            continue
        window = current_window(state, job_name, now)
        delivered = set(window["channels"])
        if delivered >= {"log", *alerts.configured()}:
            continue
        alert = Alert(
            kind=FAILURE_RATE,
            job_name=job_name,
            headline=(
                f"{failed} of {finished} runs failed in the last 24 hours"
                f" ({failed / finished:.0%}, over {FAILURE_RATE_THRESHOLD:.0%})"
            ),
            at=now,
            link=alerts.job_link(job_name),
        )
        record = window["channels"].append
        deliver(alert, alerts, context.log.warning, delivered=delivered, record=record)
    context.update_cursor(json.dumps(state))


MONITORING_SENSORS = [
    run_failure_alert_sensor,
    alert_redelivery_sensor,
    long_running_run_sensor,
    failure_rate_sensor,
    waiting_run_sensor,
    heartbeat_sensor,
]
