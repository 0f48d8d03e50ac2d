"""`run` and `list`: starting a job through the instance, and what ran last."""

from __future__ import annotations

import getpass
import os
import sys
from typing import TYPE_CHECKING

from jobs_pipeline.formats import utc_minute
from jobs_pipeline.interfaces.cli.common import EXIT_FAILED, UsageError, print_table
from jobs_pipeline.storage.embedded import fill_environment

if TYPE_CHECKING:  # Dagster and the launcher load when a command needs them, not for --help
    import dagster as dg
    from sqlalchemy import Engine

    from jobs_pipeline.interfaces.launching.plans import LaunchPlan
    from jobs_pipeline.runs.outcomes import RunOutcome


def resolve_job_name(name: str) -> str:
    """Accepts the hyphenated name users see or Dagster's underscored one."""
    from jobs_pipeline.interfaces.launching.plans import job_catalog

    candidate = name.strip().replace("-", "_")
    known = list(job_catalog())
    if candidate not in known:
        spelled = ", ".join(n.replace("_", "-") for n in known)
        raise UsageError(f"unknown job {name!r}; the jobs are: {spelled}")
    return candidate


class DatabaseUnreachable(Exception):
    """The app database refused or dropped the connection before the run started."""


def check_reachable(engine: Engine) -> None:
    from sqlalchemy import exc

    from jobs_pipeline.formats import first_line

    try:
        with engine.connect():
            pass
    except exc.DBAPIError as error:
        raise DatabaseUnreachable(f"cannot reach the app database: {first_line(error)}") from None


def command_run(
    job: str,
    *,
    dry_run: bool,
    user: str | None,
    allow_large: bool = False,
    as_of: str | None = None,
) -> int:
    from jobs_pipeline.definitions import defs
    from jobs_pipeline.formats import display_name
    from jobs_pipeline.interfaces.launching.plans import LaunchError, plan_launch
    from jobs_pipeline.storage.engine import create_app_engine

    job_name = resolve_job_name(job)
    job_def = defs.resolve_job_def(job_name)
    prepare_app_database(schema=True)
    try:
        app_engine = create_app_engine(os.environ["DATABASE_URL"])
    except ValueError as error:
        raise UsageError(str(error)) from None
    try:
        # Fail fast on a database that is not there: inside the run, a refused
        # connection is retried for minutes, as a scheduled run should be.
        check_reachable(app_engine)
        plan = plan_launch(
            job_def,
            dry_run=dry_run,
            user=user,
            allow_large=allow_large,
            app_engine=app_engine,
            as_of=as_of,
        )
    except LaunchError as error:
        raise UsageError(str(error)) from None
    except DatabaseUnreachable as error:
        print(f"[{display_name(job_name)}] {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        app_engine.dispose()
    return start_and_report(job_def, plan)


def prepare_app_database(*, schema: bool) -> None:
    """`DATABASE_URL` (the embedded database when unset, its project schema current), then
    the instance runs are recorded in: `DAGSTER_HOME`'s, or dev's for the same database.
    """
    from jobs_pipeline.interfaces.launching.dev_instance import adopt_dev_instance
    from jobs_pipeline.storage.app_database_setup import prepare_embedded_app_database
    from jobs_pipeline.storage.schema_migrations import upgrade

    environment = fill_environment(dagster_storage=False)
    if environment.app_is_embedded and schema:
        # A fresh checkout's embedded database gets the schema, not demo data.
        prepare_embedded_app_database(os.environ["DATABASE_URL"], demo_data_when_empty=False)
        upgrade(os.environ["DATABASE_URL"])
    if adopt_dev_instance(os.environ["DATABASE_URL"]) is not None:
        fill_environment(dagster_storage=True)


def start_and_report(job: dg.JobDefinition, plan: LaunchPlan) -> int:
    """Starts the run through the instance (its queue when a daemon serves it), says
    where on stderr, waits for it and prints its `Result:` line on stdout.
    """
    from jobs_pipeline.formats import display_name
    from jobs_pipeline.interfaces.launching.instance import open_instance
    from jobs_pipeline.job_parts.results import result_json
    from jobs_pipeline.operator_tools.undo import describe_left

    name = display_name(job.name)
    with open_instance() as instance:
        outcome = start_run(instance, job, plan, name)
    if outcome is None:
        return EXIT_FAILED
    if not outcome.success:
        print(f"[{name}] Failed (run {outcome.run_id}): {outcome.error}", file=sys.stderr)
        return EXIT_FAILED
    result = dict(outcome.result or {})
    # Undo's rows left alone, one a line, each with whose it is and why.
    for row in result.pop("leftAloneRows", []):
        print(f"[{name}] Left alone: {describe_left(row)}")
    print(f"[{name}] Result: {result_json({**result, 'runId': outcome.run_id})}")
    return 0


def start_run(
    instance: dg.DagsterInstance, job: dg.JobDefinition, plan: LaunchPlan, name: str
) -> RunOutcome | None:
    import uuid

    from jobs_pipeline.interfaces.launching.execution import RunQueue, execute_here
    from jobs_pipeline.interfaces.launching.instance import daemon_serves
    from jobs_pipeline.runs.outcomes import wait_for_outcome

    who = f"cli:{getpass.getuser()}"
    if not daemon_serves(instance):
        where = (
            "the temporary instance (no history; DAGSTER_HOME is unset)"
            if instance.is_ephemeral
            else f"the instance in {os.environ['DAGSTER_HOME']}"
        )
        run_id = str(uuid.uuid4())
        print(
            f"[{name}] Run {run_id}: no Dagster daemon serves {where}, so it runs in this"
            " process; the database's writer lock keeps it from any other run writing the"
            f" same tables{run_link(instance, run_id)}",
            file=sys.stderr,
        )
        try:
            return execute_here(instance, job, plan, triggered_by=who, run_id=run_id)
        except KeyboardInterrupt:
            print(
                f"[{name}] Run {run_id} stopped midway: recorded as canceled; what it had"
                " not committed was rolled back. Run it again to finish",
                file=sys.stderr,
            )
            raise
    with RunQueue(instance) as queue:
        run_id = queue.submit(job.name, plan, triggered_by=who)
        print(
            f"[{name}] Run {run_id} queued on the instance in {os.environ['DAGSTER_HOME']};"
            f" waiting for it{run_link(instance, run_id)}",
            file=sys.stderr,
        )
        try:
            return wait_for_outcome(instance, run_id)
        except KeyboardInterrupt:
            if queue.cancel_if_queued(run_id):
                print(f"[{name}] Run {run_id} taken off the queue", file=sys.stderr)
            else:
                print(f"[{name}] Run {run_id} goes on in the deployment", file=sys.stderr)
            return None


def run_link(instance: dg.DagsterInstance, run_id: str) -> str:
    if instance.is_ephemeral:
        return ""
    from jobs_pipeline.resources.alerting import webserver_url

    return f" ({webserver_url().rstrip('/')}/runs/{run_id})"


# -- list --------------------------------------------------------------------------------


def command_list() -> int:
    import dagster as dg

    from jobs_pipeline.definitions import defs
    from jobs_pipeline.formats import display_name
    from jobs_pipeline.interfaces.launching.plans import job_catalog
    from jobs_pipeline.job_parts.scheduling import priority_of, schedules_by_job

    prepare_app_database(schema=False)
    has_history = bool(os.environ.get("DAGSTER_HOME"))
    if has_history:
        fill_environment(dagster_storage=True)
    instance = dg.DagsterInstance.get() if has_history else None
    schedules = schedules_by_job(defs)
    rows = [("JOB", "DAGSTER JOB", "SCHEDULE (UTC)", "PRIORITY", "LAST RUN")]
    for job_name, job in job_catalog().items():
        schedule = schedules.get(job_name)
        cron = str(schedule.cron_schedule) if schedule else "-"
        priority = priority_of(job.tags) or "-"
        rows.append(
            (display_name(job_name), job_name, cron, priority, last_run(instance, job_name))
        )
    print_table(rows)
    if not has_history:
        print(
            "(last runs are read from the instance in DAGSTER_HOME, or from `jobs-pipeline dev`'s;"
            " neither is there)"
        )
    return 0


def last_run(instance: dg.DagsterInstance | None, job_name: str) -> str:
    """`SUCCESS at 2026-01-03 00:15 UTC (1a2b3c4d)`, with `dry run` before a dry run's."""

    from jobs_pipeline.interfaces.launching.plans import latest_run
    from jobs_pipeline.tags import DRY_RUN_TAG

    if instance is None:
        return "-"
    record = latest_run(instance, job_name)
    if record is None:
        return "never"
    run = record.dagster_run
    when = record.start_time or record.create_timestamp.timestamp()
    stamp = utc_minute(when)
    kind = "dry run " if run.tags.get(DRY_RUN_TAG) == "true" else ""
    return f"{kind}{run.status.value} at {stamp} ({run.run_id[:8]})"
