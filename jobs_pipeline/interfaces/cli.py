"""`jobs-pipeline`: run, list and serve the maintenance jobs.

Examples:
    jobs-pipeline dev                            # embedded database, Dagster on 127.0.0.1:3000
    jobs-pipeline run tier-expiration --dry-run  # what would change, changing nothing
    DATABASE_URL=postgresql://app@db/app jobs-pipeline run promo_cleanup
    jobs-pipeline list                           # jobs, schedules and last runs
    jobs-pipeline demo-data                      # fill an empty app database

Either spelling of a job's name works (`tier-expiration` or `tier_expiration`).
The last line `run` prints on stdout is the job's `Result:` line; Dagster's own
log goes to stderr.
"""

import argparse
import contextlib
import getpass
import os
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

from jobs_pipeline.storage.embedded import (
    INSTANCE_CONFIG,
    PROJECT_ROOT,
    EmbeddedServerError,
    fill_environment,
)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # what a shell reports for a command stopped by Ctrl-C: 128 + SIGINT


class UsageError(Exception):
    """Bad input from the command line; printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobs-pipeline",
        description="The trading journal's database maintenance jobs, on Dagster.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser("dev", help="embedded PostgreSQL, demo data, Dagster UI and daemon")
    dev.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=3000, help="UI port (default 3000)")

    run = commands.add_parser("run", help="run one job now through Dagster")
    run.add_argument("job", metavar="JOB", help="e.g. tier-expiration or tier_expiration")
    run.add_argument("--dry-run", action="store_true", help="change nothing; report what would")
    run.add_argument("--user", metavar="ID_OR_EMAIL", help="only for discipline-stats-rollup")
    run.add_argument(
        "--allow-large",
        action="store_true",
        help="let tier-expiration or promo-cleanup change more rows than its guards allow",
    )
    run.add_argument(
        "--as-of",
        metavar="TIMESTAMP",
        help=(
            "with --dry-run: evaluate the job's rule as if it ran then (ISO-8601 with an offset,"
            " e.g. 2026-12-06T02:00:00Z); tier-expiration, global-override-check, promo-cleanup"
            " and trial-reminder"
        ),
    )

    commands.add_parser("list", help="the jobs, their schedules and the last run of each")
    commands.add_parser("demo-data", help="fill an empty app database with demo data")

    database = commands.add_parser("db", help="the project's own schema `jobs_pipeline`")
    database_commands = database.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    database_commands.add_parser("upgrade", help="create or upgrade the schema (Alembic)")

    token = commands.add_parser("token", help="admin-API tokens")
    token_commands = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = token_commands.add_parser("create", help="issue a token for an existing app user")
    create.add_argument("--email", required=True, help="the app user's email")
    token_commands.add_parser("list", help="every token: id, email, created, last used, revoked")
    revoke = token_commands.add_parser("revoke", help="revoke a token by its id (see token list)")
    revoke.add_argument("--id", type=int, required=True, dest="token_id", help="the token's id")

    undo = commands.add_parser("undo", help="take back what one run changed")
    undo.add_argument("run_id", metavar="RUN_ID", help="the run whose changes to take back")
    undo.add_argument("--dry-run", action="store_true", help="report what would be restored")

    why = commands.add_parser("why", help="every change the jobs made to a user, or in a run")
    subject = why.add_mutually_exclusive_group(required=True)
    subject.add_argument("--user", metavar="EMAIL_OR_ID", help="a user's changes, and why")
    subject.add_argument("--run", metavar="RUN_ID", help="what one run changed (as `run` prints)")

    setup = commands.add_parser(
        "setup",
        help="prepare a deployment: the pools and their limits, the schema jobs_pipeline",
    )
    setup.add_argument(
        "--code-server",
        default="127.0.0.1:4000",
        metavar="HOST:PORT",
        help="where the workspace file (written if missing) finds the code server",
    )
    setup.add_argument(
        "--create-app-tables",
        action="store_true",
        help="for a trial on an empty database: lay the app's schema in first (the app owns it)",
    )
    commands.add_parser("doctor", help="check a deployment; exit status 1 if anything is wrong")
    metrics = commands.add_parser(
        "metrics", help="serve the deployment's Prometheus metrics (GET /metrics)"
    )
    metrics.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    # 9464: in the range exporters take by convention (Prometheus' list of default ports).
    metrics.add_argument("--port", type=int, default=9464, help="port (default 9464)")

    api = commands.add_parser("admin-api", help="serve the admin HTTP API")
    api.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    api.add_argument("--port", type=int, default=8088, help="port (default 8088)")
    api.add_argument(
        "--wait-seconds",
        type=float,
        default=30.0,
        help="how long a request waits for its run before answering 202 (default 30)",
    )
    return parser


def stop_on_sigterm_as_on_ctrl_c() -> None:
    """SIGTERM (`kill`, a service manager, a CI runner's timeout) stops a command the way
    Ctrl-C does. Python's default for SIGTERM ends the process on the spot, skipping its
    exit handlers: the embedded PostgreSQL it started would be left running, and a
    queued run would stay queued. Whatever handles Ctrl-C at that moment (Dagster's, in
    the middle of a run) handles SIGTERM too.
    """

    def on_sigterm(_signum: int, frame: Any) -> None:
        on_ctrl_c = signal.getsignal(signal.SIGINT)
        if callable(on_ctrl_c):
            on_ctrl_c(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop_on_sigterm_as_on_ctrl_c()
    try:
        return run_command(args)
    finally:
        # The command is over; what is left are the exit handlers, which stop the embedded
        # PostgreSQL it started. A stop arriving now would cut them short and leave the
        # server running, so it is ignored: the process is about to end anyway.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def run_command(args: argparse.Namespace) -> int:
    try:
        if args.command == "dev":
            return command_dev(args.host, args.port)
        if args.command == "run":
            return command_run(
                args.job,
                dry_run=args.dry_run,
                user=args.user,
                allow_large=args.allow_large,
                as_of=args.as_of,
            )
        if args.command == "list":
            return command_list()
        if args.command == "demo-data":
            return command_demo_data()
        if args.command == "db":
            return command_db_upgrade()
        if args.command == "token" and args.action == "create":
            return command_token_create(args.email)
        if args.command == "token" and args.action == "list":
            return command_token_list()
        if args.command == "token":
            return command_token_revoke(args.token_id)
        if args.command == "undo":
            return command_undo(args.run_id, dry_run=args.dry_run)
        if args.command == "why" and args.run:
            return command_why_run(args.run)
        if args.command == "why":
            return command_why(args.user)
        if args.command == "setup":
            return command_setup(args.code_server, create_app_tables=args.create_app_tables)
        if args.command == "doctor":
            return command_doctor()
        if args.command == "metrics":
            return command_metrics(args.host, args.port)
        if args.command == "admin-api":
            return command_admin_api(args.host, args.port, args.wait_seconds)
    except UsageError as error:
        print(f"jobs-pipeline: {error}", file=sys.stderr)
        return EXIT_USAGE
    except EmbeddedServerError as error:
        print(f"jobs-pipeline: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        # The exit handlers still run: the embedded PostgreSQL this process started stops.
        print("jobs-pipeline: stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    raise AssertionError(f"unhandled command {args.command}")


# -- run ---------------------------------------------------------------------------------


def resolve_job_name(name: str) -> str:
    """Accepts the hyphenated name users see or Dagster's underscored one."""
    from jobs_pipeline.interfaces.launch import job_catalog

    candidate = name.strip().replace("-", "_")
    known = list(job_catalog())
    if candidate not in known:
        spelled = ", ".join(n.replace("_", "-") for n in known)
        raise UsageError(f"unknown job {name!r}; the jobs are: {spelled}")
    return candidate


class DatabaseUnreachable(Exception):
    """The app database refused or dropped the connection before the run started."""


def check_reachable(engine: Any) -> None:
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
    from jobs_pipeline.interfaces.launch import LaunchError, plan_launch
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
    from jobs_pipeline.interfaces.launch import adopt_dev_instance
    from jobs_pipeline.storage.app_database_setup import prepare_embedded_app_database
    from jobs_pipeline.storage.schema_migrations import upgrade

    environment = fill_environment(dagster_storage=False)
    if environment.app_is_embedded and schema:
        # A fresh checkout's embedded database gets the schema, not demo data.
        prepare_embedded_app_database(os.environ["DATABASE_URL"], demo_data_when_empty=False)
        upgrade(os.environ["DATABASE_URL"])
    if adopt_dev_instance(os.environ["DATABASE_URL"]) is not None:
        fill_environment(dagster_storage=True)


def start_and_report(job: Any, plan: Any) -> int:
    """Starts the run through the instance (its queue when a daemon serves it), says
    where on stderr, waits for it and prints its `Result:` line on stdout.
    """
    from jobs_pipeline.formats import display_name
    from jobs_pipeline.interfaces.launch import open_instance
    from jobs_pipeline.jobs.undo import describe_left
    from jobs_pipeline.steps.reporting import result_json

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


def start_run(instance: Any, job: Any, plan: Any, name: str) -> Any:
    import uuid

    from jobs_pipeline.instance.run_outcomes import wait_for_outcome
    from jobs_pipeline.interfaces.launch import (
        RunQueue,
        daemon_serves,
        execute_here,
    )

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


def run_link(instance: Any, run_id: str) -> str:
    if instance.is_ephemeral:
        return ""
    from jobs_pipeline.resources.alerting import webserver_url

    return f" ({webserver_url().rstrip('/')}/runs/{run_id})"


# -- list --------------------------------------------------------------------------------


def command_list() -> int:
    import dagster as dg

    from jobs_pipeline.formats import display_name
    from jobs_pipeline.interfaces.launch import job_catalog, schedules_by_job
    from jobs_pipeline.steps.scheduling import priority_of

    prepare_app_database(schema=False)
    has_history = bool(os.environ.get("DAGSTER_HOME"))
    if has_history:
        fill_environment(dagster_storage=True)
    instance = dg.DagsterInstance.get() if has_history else None
    schedules = schedules_by_job()
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


def last_run(instance: Any, job_name: str) -> str:
    """`SUCCESS at 2026-01-03 00:15 UTC (1a2b3c4d)`, with `dry run` before a dry run's."""
    from datetime import UTC, datetime

    from jobs_pipeline.interfaces.launch import latest_run
    from jobs_pipeline.steps.writers import DRY_RUN_TAG

    if instance is None:
        return "-"
    record = latest_run(instance, job_name)
    if record is None:
        return "never"
    run = record.dagster_run
    when = record.start_time or record.create_timestamp.timestamp()
    stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M UTC")
    kind = "dry run " if run.tags.get(DRY_RUN_TAG) == "true" else ""
    return f"{kind}{run.status.value} at {stamp} ({run.run_id[:8]})"


# -- demo-data ---------------------------------------------------------------------------


def app_database_url() -> str:
    """`DATABASE_URL`; when unset, the embedded database's, given the app's schema (the
    project owns that database, never one `DATABASE_URL` names).
    """
    from jobs_pipeline.storage.app_database_setup import prepare_embedded_app_database

    environment = fill_environment(dagster_storage=False)
    url = os.environ["DATABASE_URL"]
    if environment.app_is_embedded:
        prepare_embedded_app_database(url, demo_data_when_empty=False)
    return url


def command_demo_data() -> int:
    from jobs_pipeline.storage.app_database_setup import (
        DemoDataRefused,
        load_demo_data,
        setup_engine,
    )

    url = app_database_url()
    with setup_engine(url) as engine:
        try:
            created = load_demo_data(engine)
        except DemoDataRefused as refusal:
            raise UsageError(str(refusal)) from None
    print(f"demo data: {created} users with their journals, promo codes and an override")
    return 0


# -- db upgrade -------------------------------------------------------------------------


def command_db_upgrade() -> int:
    from sqlalchemy import exc

    from jobs_pipeline.formats import first_line
    from jobs_pipeline.storage.app_database_setup import (
        AppTablesMissing,
        require_app_tables,
        setup_engine,
    )
    from jobs_pipeline.storage.schema_migrations import upgrade

    url = app_database_url()
    try:
        with setup_engine(url) as engine:
            require_app_tables(engine)
        revision = upgrade(url)
    except ValueError as error:
        raise UsageError(str(error)) from None
    except AppTablesMissing as missing:
        print(f"jobs-pipeline: db upgrade: {missing}", file=sys.stderr)
        return EXIT_FAILED
    except exc.DBAPIError as error:
        print(f"jobs-pipeline: db upgrade failed: {first_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    print(f"jobs_pipeline schema at revision {revision}")
    return 0


# -- setup and doctor -------------------------------------------------------------------


def deployment_instance_environment(command: str) -> None:
    """`DATABASE_URL` and the instance in `DAGSTER_HOME` (or `dev`'s for the same app
    database): what `setup` and `doctor` work on.
    """
    prepare_app_database(schema=False)
    if not os.environ.get("DAGSTER_HOME"):
        raise UsageError(
            f"{command} works on a Dagster instance: set DAGSTER_HOME (docs/deploying.md), or"
            " start `jobs-pipeline dev` first and it uses dev's"
        )
    fill_environment(dagster_storage=True)


def command_setup(code_server: str, *, create_app_tables: bool) -> int:
    from jobs_pipeline.operations.setup import SetupRefused, parse_address, set_up

    try:
        parse_address(code_server)
    except ValueError as error:
        raise UsageError(str(error)) from None
    deployment_instance_environment("setup")
    try:
        set_up(
            os.environ["DATABASE_URL"],
            Path(os.environ["DAGSTER_HOME"]),
            code_server=code_server,
            create_app_tables=create_app_tables,
            write=print,
        )
    except SetupRefused as refusal:
        print(f"jobs-pipeline: setup: {refusal}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def command_doctor() -> int:
    from jobs_pipeline.definitions import defs
    from jobs_pipeline.operations.doctor import check_deployment

    deployment_instance_environment("doctor")
    home = Path(os.environ["DAGSTER_HOME"])
    healthy = check_deployment(os.environ["DATABASE_URL"], home, defs, print)
    return 0 if healthy else EXIT_FAILED


def command_metrics(host: str, port: int) -> int:
    """Serves until SIGTERM or Ctrl-C, then exits 0: being stopped is how it ends."""
    import dagster as dg

    from jobs_pipeline.definitions import defs
    from jobs_pipeline.operations.metrics import metrics_registry, serve
    from jobs_pipeline.storage.engine import create_app_engine

    deployment_instance_environment("metrics")
    engine = create_app_engine(os.environ["DATABASE_URL"])

    def ready(url: str) -> None:
        print(f"jobs-pipeline: Prometheus metrics on {url}", file=sys.stderr, flush=True)

    try:
        with dg.DagsterInstance.get() as instance:
            serve(metrics_registry(instance, engine, defs), host, port, ready)
    except KeyboardInterrupt:
        print("jobs-pipeline: metrics: stopped", file=sys.stderr)
    except OSError as error:
        print(f"jobs-pipeline: metrics: cannot serve on {host}:{port}: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        engine.dispose()
    return 0


# -- undo and why -------------------------------------------------------------------------


def command_undo(run_id: str, *, dry_run: bool) -> int:
    from jobs_pipeline.definitions import defs
    from jobs_pipeline.interfaces.launch import DRY_RUN_TAG, LaunchPlan
    from jobs_pipeline.jobs.undo import JOB_NAME, OP_NAME

    project_engine().dispose()  # the schema is there and current
    plan = LaunchPlan(
        run_config={"ops": {OP_NAME: {"config": {"run_id": run_id.strip(), "dry_run": dry_run}}}},
        tags={DRY_RUN_TAG: "true"} if dry_run else {},
    )
    return start_and_report(defs.resolve_job_def(JOB_NAME), plan)


def command_why(id_or_email: str) -> int:
    import uuid

    from jobs_pipeline.storage.ledger import changes_to_user
    from jobs_pipeline.storage.users import find_user

    engine = project_engine()
    try:
        with engine.connect() as connection:
            try:
                user_id = str(find_user(connection, id_or_email))
            except LookupError:
                try:  # a user the app has since deleted is still in the ledger by id
                    user_id = str(uuid.UUID(id_or_email.strip()))
                except ValueError:
                    raise UsageError(f"no user with id or email {id_or_email.strip()!r}") from None
            entries = changes_to_user(connection, user_id)
    finally:
        engine.dispose()
    if not entries:
        print(f"no changes by the jobs are recorded for user {user_id}")
        return 0
    print_changes(entries)
    return 0


def command_why_run(run_id: str) -> int:
    from jobs_pipeline.storage.ledger import changes_of_run

    engine = project_engine()
    try:
        with engine.connect() as connection:
            entries = changes_of_run(connection, run_id.strip())
    finally:
        engine.dispose()
    if not entries:
        print(
            f"no changes are recorded for run {run_id.strip()} (it changed nothing, is past"
            " the ledger's retention, or its job keeps no ledger: the rollup)"
        )
        return 0
    print_changes(entries)
    return 0


def print_changes(entries: list[Any]) -> None:
    from jobs_pipeline.storage.ledger import describe_change

    for entry in entries:
        when = entry.changed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(
            f"{when}  {entry.job} run {entry.run_id}  {entry.table_name} {entry.row_key}\n"
            f"    {describe_change(entry.before, entry.after)}\n"
            f"    because {entry.reason}"
        )


# -- tokens and the admin API -------------------------------------------------------------


def project_engine() -> Any:
    """The app database, its project schema current (upgraded when it is the embedded one)."""
    from jobs_pipeline.storage.engine import create_app_engine
    from jobs_pipeline.storage.schema_migrations import require_current_schema

    prepare_app_database(schema=True)
    url = os.environ["DATABASE_URL"]
    try:
        engine = create_app_engine(url)
    except ValueError as error:
        raise UsageError(str(error)) from None
    with engine.connect() as connection:
        try:
            require_current_schema(connection)
        except Exception as outdated:
            engine.dispose()
            raise UsageError(str(outdated)) from None
    return engine


def command_token_create(email: str) -> int:
    from jobs_pipeline.storage.api_tokens import UnknownUser, issue_token

    engine = project_engine()
    try:
        with engine.begin() as connection:
            token_id, token = issue_token(connection, email)
    except UnknownUser as missing:
        raise UsageError(str(missing)) from None
    finally:
        engine.dispose()
    print(
        f"token {token_id} for {email.strip()} (`token list` shows it, `token revoke --id"
        f" {token_id}` revokes it); the token is shown only now:",
        file=sys.stderr,
    )
    print(token)
    return 0


def command_token_list() -> int:
    from jobs_pipeline.storage.api_tokens import list_tokens

    engine = project_engine()
    try:
        with engine.connect() as connection:
            tokens = list_tokens(connection)
    finally:
        engine.dispose()
    rows = [("ID", "EMAIL", "CREATED", "LAST USED", "REVOKED")]
    rows += [
        (
            str(token.token_id),
            token.email or "(user deleted)",
            utc_minute(token.created_at),
            utc_minute(token.last_used_at),
            utc_minute(token.revoked_at),
        )
        for token in tokens
    ]
    print_table(rows)
    return 0


def utc_minute(moment: Any) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else "-"


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def command_token_revoke(token_id: int) -> int:
    from jobs_pipeline.storage.api_tokens import revoke_token

    engine = project_engine()
    try:
        with engine.begin() as connection:
            revoked = revoke_token(connection, token_id)
    finally:
        engine.dispose()
    if not revoked:
        raise UsageError(f"no live token with id {token_id}")
    print(f"token {token_id} revoked")
    return 0


def command_admin_api(host: str, port: int, wait_seconds: float) -> int:
    import uvicorn

    from jobs_pipeline.interfaces.admin_api import create_app
    from jobs_pipeline.interfaces.launch import open_instance

    engine = project_engine()
    if not os.environ.get("DAGSTER_HOME"):
        engine.dispose()
        raise UsageError(
            "the admin API starts runs on a Dagster instance's queue: set DAGSTER_HOME"
            " (docs/deploying.md), or start `jobs-pipeline dev` first and use its instance"
        )
    fill_environment(dagster_storage=True)
    try:
        with open_instance() as instance:
            app = create_app(
                engine, instance, wait_seconds=wait_seconds, stopping=lambda: server.should_exit
            )
            # After SIGTERM, requests waiting for their runs are answered 202 (the runs go
            # on); any other request in flight gets a few seconds.
            config = uvicorn.Config(
                app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5
            )
            server = uvicorn.Server(config)
            server.run()
    finally:
        engine.dispose()
    return 0


# -- dev ---------------------------------------------------------------------------------


def prepare_dagster_home() -> Path:
    """`$DAGSTER_HOME`, or a project-local one holding the project's deploy/dagster.yaml."""
    from jobs_pipeline.interfaces.launch import dev_home

    configured = os.environ.get("DAGSTER_HOME")
    if configured:
        return Path(configured)
    home = dev_home()
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(INSTANCE_CONFIG, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def command_dev(host: str, port: int) -> int:
    from jobs_pipeline.interfaces.launch import (
        open_instance,
        record_served_database,
        record_served_webserver,
    )
    from jobs_pipeline.storage.app_database_setup import prepare_embedded_app_database
    from jobs_pipeline.storage.schema_migrations import upgrade

    environment = fill_environment(dagster_storage=True)
    app_url = os.environ["DATABASE_URL"]
    if environment.app_is_embedded:
        made = prepare_embedded_app_database(app_url, demo_data_when_empty=True)
        if made:
            print(f"jobs-pipeline: demo data: {made} users", file=sys.stderr)
    # The project's own schema, in the embedded database or the one DATABASE_URL names.
    upgrade(app_url)
    home = prepare_dagster_home()
    # `run`, `undo` and `list` find this instance when they use the same app database.
    record_served_database(home, app_url)
    with open_instance():
        pass  # creates the storage's tables and the pools' limits before the daemon runs
    # Links in alerts, in the Launchpad and in `run`'s output name this UI's own port.
    os.environ.setdefault("DAGSTER_WEBSERVER_URL", f"http://{host}:{port}")
    record_served_webserver(home, os.environ["DAGSTER_WEBSERVER_URL"])
    command = dagster_dev_command(host, port)
    print(
        f"jobs-pipeline: Dagster UI on http://{host}:{port} (DAGSTER_HOME={home})\n"
        f"jobs-pipeline: app database {printable_url(app_url)}\n"
        f"jobs-pipeline:   psql {shlex.quote(libpq_url(app_url))}\n"
        "jobs-pipeline: stop with Ctrl-C (or SIGTERM): the UI, the daemon and the"
        " embedded database stop with it",
        file=sys.stderr,
    )
    return supervise(command, cwd=PROJECT_ROOT if in_checkout() else Path.cwd())


def in_checkout() -> bool:
    """The project's checkout, where `dg` finds the project (pyproject.toml's [tool.dg])."""
    return (PROJECT_ROOT / "pyproject.toml").exists()


def dagster_dev_command(host: str, port: int) -> list[str]:
    """`dg dev` in the checkout, as Dagster now has it (`dagster dev` warns that it is
    superseded); elsewhere, `dagster dev` on the definitions module.
    """
    bin_dir = Path(sys.executable).parent
    if in_checkout():
        return [str(bin_dir / "dg"), "dev", "-h", host, "-p", str(port)]
    target = ["-m", "jobs_pipeline.definitions"]
    return [str(bin_dir / "dagster"), "dev", *target, "-h", host, "-p", str(port)]


def printable_url(url: str) -> str:
    """A database URL with its password, if any, replaced by ***."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def libpq_url(url: str) -> str:
    """What `psql` takes: the URL without SQLAlchemy's driver or the password."""
    from sqlalchemy.engine import URL, make_url

    parsed = make_url(url)
    bare = URL.create(
        "postgresql", parsed.username, None, parsed.host, parsed.port, parsed.database, parsed.query
    )
    return urllib.parse.unquote(bare.render_as_string())


def supervise(command: list[str], cwd: Path) -> int:
    """Runs `dagster dev` in its own process group and stops all of it on SIGINT/SIGTERM.

    The child gets default signal handlers: one started from a non-interactive
    shell would otherwise inherit SIGINT ignored, and Dagster then ignores SIGTERM too.
    """

    def reset_signals() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    child = subprocess.Popen(command, cwd=cwd, start_new_session=True, preexec_fn=reset_signals)  # noqa: S603

    def stop(_signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        return child.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
