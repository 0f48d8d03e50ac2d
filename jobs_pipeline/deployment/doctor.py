"""`jobs-pipeline doctor`: a deployment checked the way an operator would at 3 a.m.

Each check gives one line: `ok` with what it saw, or `FAIL` with what is wrong and what
to do about it. The deployment is healthy when no line fails.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from sqlalchemy import Engine

from jobs_pipeline.dagster_private import code_server_load_error
from jobs_pipeline.formats import display_name, elapsed, first_line, utc_minute
from jobs_pipeline.job_parts.scheduling import (
    schedules_by_job,
    success_overdue_after,
    waiting_alert_after,
)
from jobs_pipeline.redaction import redact
from jobs_pipeline.runs.status import (
    Pool,
    daemon_heartbeat_ages,
    job_history,
    job_pools,
    read_pools,
    waiting_runs,
)
from jobs_pipeline.runs.workers import (
    DEFAULT_WORKER_GONE_AFTER_SECONDS,
    workers_alive,
)
from jobs_pipeline.storage.app_database_setup import missing_app_tables
from jobs_pipeline.storage.engine import create_app_engine
from jobs_pipeline.storage.outbox import outbox_backlog
from jobs_pipeline.storage.schema_migrations import current_revision, head_revision
from jobs_pipeline.tags import RUN_WORKER_TAGS

# A daemon misses a few of its 30-second heartbeats: it is down (or its thread is stuck).
DAEMON_STALE_SECONDS = 120
# Stuck in STARTING or CANCELING this long: run monitoring should have ended it.
TRANSITION_STUCK_SECONDS = 180
# An email due this long ago and still pending: delivery is not keeping up.
OUTBOX_BACKLOG_SECONDS = 1800


@dataclass(frozen=True)
class Finding:
    healthy: bool
    text: str

    def line(self) -> str:
        return f"{'ok  ' if self.healthy else 'FAIL'}  {self.text}"


def ok(text: str) -> Finding:
    return Finding(True, text)


def fail(text: str) -> Finding:
    return Finding(False, text)


@dataclass(frozen=True)
class Deployment:
    """What doctor looks at: the instance, the app database, the code, the workspace."""

    instance: dg.DagsterInstance
    app_engine: Engine
    defs: dg.Definitions
    workspace: Path | None
    now: float

    @property
    def jobs(self) -> list[dg.JobDefinition]:
        return [job for job in self.defs.resolve_all_job_defs() if not job.name.startswith("__")]


Check = Callable[[Deployment], Iterable[Finding]]


def examine(deployment: Deployment) -> Iterator[Finding]:
    """Every check, in the order an operator reads them; a check that cannot run says why."""
    for check in CHECKS:
        try:
            yield from check(deployment)
        except Exception as error:
            name = check.__name__.removeprefix("check_").replace("_", " ")
            yield fail(f"{name}: could not be checked: {type(error).__name__}: {first_line(error)}")


# -- the processes ----------------------------------------------------------------------------


def check_daemons(deployment: Deployment) -> Iterable[Finding]:
    ages = daemon_heartbeat_ages(deployment.instance, deployment.now)
    stale = {daemon: seconds for daemon, seconds in ages.items() if seconds > DAEMON_STALE_SECONDS}
    if not stale:
        oldest = max(ages.values(), default=0.0)
        yield ok(f"daemon: {len(ages)} heartbeats, the oldest {elapsed(oldest)} old")
        return
    silent = ", ".join(
        f"{daemon} ({'never seen' if math.isinf(seconds) else f'{elapsed(seconds)} ago'})"
        for daemon, seconds in sorted(stale.items())
    )
    yield fail(
        f"daemon: no recent heartbeat from {silent}: no schedules, sensors, alerts or queued"
        " runs while it is down; start `dagster-daemon run` (or see its log for why it stopped)"
    )


def check_code_location(deployment: Deployment) -> Iterable[Finding]:
    servers = grpc_servers(deployment.workspace)
    if not servers:
        yield ok(f"code location: loads in this process ({len(deployment.jobs)} jobs)")
        return
    for host, port in servers:
        problem = code_server_problem(host, port)
        where = f"code server {host}:{port}"
        if problem is None:
            yield ok(f"code location: {where} answers and its code loads")
        else:
            yield fail(
                f"code location: {where} {problem}; start it (`dagster code-server start`) or"
                " see its log"
            )


def grpc_servers(workspace: Path | None) -> list[tuple[str, int]]:
    if workspace is None or not workspace.exists():
        return []
    document = yaml.safe_load(workspace.read_text()) or {}
    found = []
    for entry in document.get("load_from", []):
        server = entry.get("grpc_server") if isinstance(entry, dict) else None
        if server and server.get("port"):
            found.append((str(server.get("host", "localhost")), int(server["port"])))
    return found


def code_server_problem(host: str, port: int) -> str | None:
    """None when the code server answers and lists its repository; else what is wrong."""
    try:
        load_error = code_server_load_error(host, port)
    except Exception as error:
        return f"does not answer ({type(error).__name__})"
    return None if load_error is None else f"fails to load the code: {load_error}"


# -- storage ----------------------------------------------------------------------------------


def check_pools(deployment: Deployment) -> Iterable[Finding]:
    expected = job_pools(deployment.jobs)
    storage = deployment.instance.event_log_storage
    limits = {limit.name: limit.limit for limit in storage.get_pool_limits()}
    bad = False
    for pool in expected:
        if pool not in limits:
            bad = True
            yield fail(f"pool {pool} has no limit yet: run `jobs-pipeline setup`")
        elif limits[pool] < 1:
            bad = True
            yield fail(
                f"pool {pool}'s limit is {limits[pool]}: no run writing its table can start;"
                f" `dagster instance concurrency set {pool} 1`"
            )
    if not bad:
        yield ok(f"pools: {', '.join(f'{pool}={limits[pool]}' for pool in expected)}")


def check_app_database(deployment: Deployment) -> Iterable[Finding]:
    missing = missing_app_tables(deployment.app_engine)
    if missing:
        yield fail(
            f"app database: the app's tables are missing ({', '.join(missing)}): is"
            " DATABASE_URL the app's database?"
        )
        return
    with deployment.app_engine.connect() as connection:
        current, head = current_revision(connection), head_revision()
    if current != head:
        yield fail(
            f"schema jobs_pipeline is at revision {current or 'none'}, the code needs {head}:"
            " run `jobs-pipeline db upgrade` (or `jobs-pipeline setup`)"
        )
    else:
        yield ok(f"app database: the app's tables are there; schema jobs_pipeline at {head}")


# -- runs -------------------------------------------------------------------------------------


def check_started_runs(deployment: Deployment) -> Iterable[Finding]:
    instance, now = deployment.instance, deployment.now
    records = instance.get_run_records(
        dg.RunsFilter(
            statuses=[
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED,
                dg.DagsterRunStatus.CANCELING,
            ]
        )
    )
    watched = [
        r
        for r in records
        if r.dagster_run.status == dg.DagsterRunStatus.STARTED
        and any(tag in r.dagster_run.tags for tag in RUN_WORKER_TAGS)
        and r.start_time is not None
        and now - r.start_time > RECHECK_GRACE_SECONDS
    ]
    alive = workers_alive(instance, [r.dagster_run.run_id for r in watched]) or {}
    bad = False
    for record in records:
        run = record.dagster_run
        name = f"run {run.run_id} ({display_name(run.job_name)})"
        if alive.get(run.run_id) is False:
            bad = True
            yield fail(
                f"{name} is STARTED but its worker process is gone: the daemon fails it within"
                f" {DEFAULT_WORKER_GONE_AFTER_SECONDS} s and frees its place; if it does not, is"
                " the daemon running?"
            )
        elif run.status != dg.DagsterRunStatus.STARTED:
            since = record.update_timestamp.timestamp()
            if now - since > TRANSITION_STUCK_SECONDS:
                bad = True
                yield fail(
                    f"{name} has been {run.status.value} for {elapsed(now - since)}: run monitoring"
                    " should have ended it; is the daemon running?"
                )
    if not bad:
        yield ok(f"runs in progress: {len(records)}, every worker alive")


RECHECK_GRACE_SECONDS = 30  # a run just started takes its sign of life within a second or so


def check_waiting_runs(deployment: Deployment) -> Iterable[Finding]:
    instance, now = deployment.instance, deployment.now
    pools = project_pools(deployment)
    waiting = waiting_runs(instance, pools, now)
    late = [w for w in waiting if w.waited(now) > waiting_alert_after(w.run.tags)]
    for w in late:
        yield fail(
            f"run {w.run.run_id} ({display_name(w.run.job_name)}) has waited"
            f" {elapsed(w.waited(now))} for {w.waits_for}"
        )
    if not late:
        yield ok(f"queue: {len(waiting)} waiting, none past its limit")


def project_pools(deployment: Deployment) -> list[Pool]:
    return read_pools(deployment.instance, job_pools(deployment.jobs))


def check_held_slots(deployment: Deployment) -> Iterable[Finding]:
    held = [slot for pool in project_pools(deployment) for slot in pool.held]
    orphaned = [slot for slot in held if slot.by_finished_run]
    for slot in orphaned:
        status = slot.run.status.value if slot.run else "deleted"
        yield fail(
            f"pool {slot.pool}: a slot is held by run {slot.run_id}, which has ended ({status}):"
            " every later writer of its table waits; the daemon frees it within a minute"
            " (run_monitoring.free_slots_after_run_end_seconds in dagster.yaml); is it running?"
        )
    if not orphaned:
        yield ok(f"pool slots: {len(held)} held, each by a run in progress")


def check_last_successes(deployment: Deployment) -> Iterable[Finding]:
    fine = []
    for job_name, schedule in sorted(schedules_by_job(deployment.defs).items()):
        history = job_history(deployment.instance, job_name)
        if history.last_success is None or history.last_success.end_time is None:
            fine.append(f"{display_name(job_name)} never yet")
            continue
        since = deployment.now - history.last_success.end_time
        overdue_after = success_overdue_after(schedule)
        if since > overdue_after:
            yield fail(
                f"{display_name(job_name)} last succeeded {elapsed(since)} ago"
                f" ({utc_minute(history.last_success.end_time)}); its schedule"
                f" `{schedule.cron_schedule}` expects one within {elapsed(overdue_after)}: see its"
                " last runs in the UI (failed? schedule off?)"
            )
        else:
            fine.append(f"{display_name(job_name)} {elapsed(since)} ago")
    if fine:
        yield ok(f"last successes: {', '.join(fine)}")


def check_outbox(deployment: Deployment) -> Iterable[Finding]:
    with deployment.app_engine.connect() as connection:
        backlog = outbox_backlog(connection)
    late = backlog.oldest_due_seconds
    if late > OUTBOX_BACKLOG_SECONDS:
        yield fail(
            f"email outbox: {backlog.due} emails due, the oldest for {elapsed(late)}: is"
            " email-delivery running (its schedule, its last runs, SMTP_HOST)?"
        )
    else:
        yield ok(f"email outbox: {backlog.due} due now, the oldest for {elapsed(late)}")


CHECKS: Sequence[Check] = (
    check_daemons,
    check_code_location,
    check_pools,
    check_app_database,
    check_started_runs,
    check_waiting_runs,
    check_held_slots,
    check_last_successes,
    check_outbox,
)


def check_deployment(
    app_url: str, home: Path, defs: dg.Definitions, write: Callable[[str], Any]
) -> bool:
    """Opens what doctor looks at and reports on it; whether the deployment is healthy.
    An instance whose storage cannot be reached is one finding, not a traceback.
    """
    workspace = home / "workspace.yaml"
    engine = create_app_engine(app_url)
    try:
        try:
            instance = dg.DagsterInstance.get()
        except Exception as error:
            write(
                fail(
                    f"Dagster's storage: the instance in {home} does not open:"
                    f" {redact(first_line(error))}: is DAGSTER_POSTGRES_URL's database up?"
                ).line()
            )
            return False
        with instance:
            deployment = Deployment(
                instance=instance,
                app_engine=engine,
                defs=defs,
                workspace=workspace if workspace.exists() else None,
                now=time.time(),
            )
            return report(deployment, write)
    finally:
        engine.dispose()


def report(deployment: Deployment, write: Callable[[str], Any]) -> bool:
    """Writes each finding's line; whether the deployment is healthy."""
    healthy = True
    for finding in examine(deployment):
        write(finding.line())
        healthy = healthy and finding.healthy
    return healthy
