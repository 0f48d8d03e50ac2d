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
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

from jobs_pipeline.embedded import PROJECT_ROOT, fill_environment, state_dir

EXIT_FAILED = 1
EXIT_USAGE = 2


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
        help="let tier-expiration or promo-cleanup change more rows than its guard allows",
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
    revoke = token_commands.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("--id", type=int, required=True, dest="token_id", help="the token's id")

    undo = commands.add_parser("undo", help="take back what one run changed")
    undo.add_argument("run_id", metavar="RUN_ID", help="the run whose changes to take back")
    undo.add_argument("--dry-run", action="store_true", help="report what would be restored")

    why = commands.add_parser("why", help="every change the jobs made to one user, and why")
    why.add_argument("--user", required=True, metavar="EMAIL_OR_ID")

    api = commands.add_parser("admin-api", help="serve the admin HTTP API")
    api.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    api.add_argument("--port", type=int, default=8088, help="port (default 8088)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "dev":
            return command_dev(args.host, args.port)
        if args.command == "run":
            return command_run(
                args.job, dry_run=args.dry_run, user=args.user, allow_large=args.allow_large
            )
        if args.command == "list":
            return command_list()
        if args.command == "demo-data":
            return command_demo_data()
        if args.command == "db":
            return command_db_upgrade()
        if args.command == "token" and args.action == "create":
            return command_token_create(args.email)
        if args.command == "token":
            return command_token_revoke(args.token_id)
        if args.command == "undo":
            return command_undo(args.run_id, dry_run=args.dry_run)
        if args.command == "why":
            return command_why(args.user)
        if args.command == "admin-api":
            return command_admin_api(args.host, args.port)
    except UsageError as error:
        print(f"jobs-pipeline: {error}", file=sys.stderr)
        return EXIT_USAGE
    raise AssertionError(f"unhandled command {args.command}")


# -- run ---------------------------------------------------------------------------------


def job_names() -> list[str]:
    from jobs_pipeline.definitions import defs
    from jobs_pipeline.jobs.scheduling import is_maintenance_job

    return sorted(job.name for job in defs.resolve_all_job_defs() if is_maintenance_job(job))


def resolve_job_name(name: str) -> str:
    """Accepts the seed's hyphenated name or Dagster's underscored one."""
    candidate = name.strip().replace("-", "_")
    known = job_names()
    if candidate not in known:
        spelled = ", ".join(n.replace("_", "-") for n in known)
        raise UsageError(f"unknown job {name!r}; the jobs are: {spelled}")
    return candidate


class DatabaseUnreachable(Exception):
    """The app database refused or dropped the connection before the run started."""


def check_reachable(engine: Any) -> None:
    from sqlalchemy import exc

    from jobs_pipeline.database import first_line

    try:
        with engine.connect():
            pass
    except exc.DBAPIError as error:
        raise DatabaseUnreachable(f"cannot reach the app database: {first_line(error)}") from None


def command_run(job: str, *, dry_run: bool, user: str | None, allow_large: bool = False) -> int:
    from jobs_pipeline.app_database_setup import prepare_embedded_app_database
    from jobs_pipeline.database import create_app_engine
    from jobs_pipeline.definitions import defs
    from jobs_pipeline.jobs.reporting import result_json, seed_name
    from jobs_pipeline.launch import LaunchError, plan_launch, run_now
    from jobs_pipeline.schema_migrations import upgrade

    job_name = resolve_job_name(job)
    job_def = defs.resolve_job_def(job_name)
    environment = fill_environment(dagster_storage=bool(os.environ.get("DAGSTER_HOME")))
    if environment.app_is_embedded:
        # A fresh checkout's embedded database gets the schema, not demo data.
        prepare_embedded_app_database(os.environ["DATABASE_URL"], demo_data_when_empty=False)
        upgrade(os.environ["DATABASE_URL"])
    try:
        app_engine = create_app_engine(os.environ["DATABASE_URL"])
    except ValueError as error:
        raise UsageError(str(error)) from None
    try:
        # Fail fast on a database that is not there: inside the run, a refused
        # connection is retried for minutes, as a scheduled run should be.
        check_reachable(app_engine)
        plan = plan_launch(
            job_def, dry_run=dry_run, user=user, allow_large=allow_large, app_engine=app_engine
        )
    except LaunchError as error:
        raise UsageError(str(error)) from None
    except DatabaseUnreachable as error:
        print(f"[{seed_name(job_name)}] {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        app_engine.dispose()
    outcome = run_now(job_def, plan, triggered_by="cli")
    name = seed_name(job_name)
    if not outcome.success:
        print(f"[{name}] Failed (run {outcome.run_id}): {outcome.error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"[{name}] Result: {result_json(outcome.result or {})}")
    return 0


# -- list --------------------------------------------------------------------------------


def command_list() -> int:
    import dagster as dg

    from jobs_pipeline.definitions import defs
    from jobs_pipeline.jobs.reporting import seed_name

    has_history = bool(os.environ.get("DAGSTER_HOME"))
    if has_history:
        fill_environment(dagster_storage=True)
    instance = dg.DagsterInstance.get() if has_history else None
    schedules = {
        s.job_name: s for s in defs.schedules or [] if isinstance(s, dg.ScheduleDefinition)
    }
    rows = [("JOB", "DAGSTER JOB", "SCHEDULE (UTC)", "PRIORITY", "LAST RUN")]
    for job_name in job_names():
        schedule = schedules.get(job_name)
        cron = str(schedule.cron_schedule) if schedule else "-"
        priority = defs.resolve_job_def(job_name).tags.get("priority", "-")
        rows.append((seed_name(job_name), job_name, cron, priority, last_run(instance, job_name)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    if not has_history:
        print("(last runs are read from the instance in DAGSTER_HOME, which is not set)")
    return 0


def last_run(instance: Any, job_name: str) -> str:
    import dagster as dg

    if instance is None:
        return "-"
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=job_name), limit=1)
    if not runs:
        return "never"
    record = instance.get_run_record_by_id(runs[0].run_id)
    when = record.start_time or record.create_timestamp.timestamp() if record else None
    from datetime import UTC, datetime

    stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M UTC") if when else "?"
    return f"{runs[0].status.value} at {stamp} ({runs[0].run_id[:8]})"


# -- demo-data ---------------------------------------------------------------------------


def command_demo_data() -> int:
    from jobs_pipeline.app_database_setup import (
        DemoDataRefused,
        load_demo_data,
        prepare_embedded_app_database,
        setup_engine,
    )

    environment = fill_environment(dagster_storage=False)
    url = os.environ["DATABASE_URL"]
    if environment.app_is_embedded:
        prepare_embedded_app_database(url, demo_data_when_empty=False)
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

    from jobs_pipeline.database import first_line
    from jobs_pipeline.schema_migrations import upgrade

    fill_environment(dagster_storage=False)
    try:
        revision = upgrade(os.environ["DATABASE_URL"])
    except ValueError as error:
        raise UsageError(str(error)) from None
    except exc.DBAPIError as error:
        print(f"jobs-pipeline: db upgrade failed: {first_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    print(f"jobs_pipeline schema at revision {revision}")
    return 0


# -- undo and why -------------------------------------------------------------------------


def command_undo(run_id: str, *, dry_run: bool) -> int:
    from jobs_pipeline.definitions import defs
    from jobs_pipeline.jobs.reporting import result_json, seed_name
    from jobs_pipeline.jobs.undo import JOB_NAME, OP_NAME
    from jobs_pipeline.launch import LaunchPlan, run_now

    project_engine().dispose()  # the schema is there and current
    plan = LaunchPlan(
        run_config={"ops": {OP_NAME: {"config": {"run_id": run_id.strip(), "dry_run": dry_run}}}}
    )
    outcome = run_now(defs.resolve_job_def(JOB_NAME), plan, triggered_by="cli")
    name = seed_name(JOB_NAME)
    if not outcome.success:
        print(f"[{name}] Failed (run {outcome.run_id}): {outcome.error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"[{name}] Result: {result_json(outcome.result or {})}")
    return 0


def command_why(id_or_email: str) -> int:
    import uuid

    from jobs_pipeline.jobs.discipline_stats_rollup import find_user
    from jobs_pipeline.ledger import changes_to_user, describe_change

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
    for entry in entries:
        when = entry.changed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(
            f"{when}  {entry.job} run {entry.run_id}  {entry.table_name} {entry.row_key}\n"
            f"    {describe_change(entry.before, entry.after)}\n"
            f"    because {entry.reason}"
        )
    return 0


# -- tokens and the admin API -------------------------------------------------------------


def project_engine() -> Any:
    """The app database, its project schema current (upgraded when it is the embedded one)."""
    from jobs_pipeline.app_database_setup import prepare_embedded_app_database
    from jobs_pipeline.database import create_app_engine
    from jobs_pipeline.schema_migrations import require_current_schema, upgrade

    environment = fill_environment(dagster_storage=bool(os.environ.get("DAGSTER_HOME")))
    url = os.environ["DATABASE_URL"]
    if environment.app_is_embedded:
        prepare_embedded_app_database(url, demo_data_when_empty=False)
        upgrade(url)
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
    from jobs_pipeline.api_tokens import UnknownUser, issue_token

    engine = project_engine()
    try:
        with engine.begin() as connection:
            token_id, token = issue_token(connection, email)
    except UnknownUser as missing:
        raise UsageError(str(missing)) from None
    finally:
        engine.dispose()
    print(f"token {token_id} for {email.strip()}; it is shown only now:", file=sys.stderr)
    print(token)
    return 0


def command_token_revoke(token_id: int) -> int:
    from jobs_pipeline.api_tokens import revoke_token

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


def command_admin_api(host: str, port: int) -> int:
    import uvicorn

    from jobs_pipeline.admin_api import create_app

    engine = project_engine()
    try:
        uvicorn.run(create_app(engine), host=host, port=port, log_level="info")
    finally:
        engine.dispose()
    return 0


# -- dev ---------------------------------------------------------------------------------


def prepare_dagster_home() -> Path:
    """`$DAGSTER_HOME`, or a project-local one holding the project's dagster.yaml."""
    configured = os.environ.get("DAGSTER_HOME")
    if configured:
        return Path(configured)
    home = state_dir() / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def command_dev(host: str, port: int) -> int:
    from jobs_pipeline.app_database_setup import prepare_embedded_app_database
    from jobs_pipeline.schema_migrations import upgrade

    environment = fill_environment(dagster_storage=True)
    if environment.app_is_embedded:
        made = prepare_embedded_app_database(os.environ["DATABASE_URL"], demo_data_when_empty=True)
        if made:
            print(f"jobs-pipeline: demo data: {made} users", file=sys.stderr)
    # The project's own schema, in the embedded database or the one DATABASE_URL names.
    upgrade(os.environ["DATABASE_URL"])
    home = prepare_dagster_home()
    workspace = PROJECT_ROOT / "workspace.yaml"
    target = ["-w", str(workspace)] if workspace.exists() else ["-m", "jobs_pipeline.definitions"]
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", *target, "-h", host, "-p", str(port)]
    print(
        f"jobs-pipeline: Dagster UI on http://{host}:{port} (DAGSTER_HOME={home})", file=sys.stderr
    )
    return supervise(command, cwd=PROJECT_ROOT if workspace.exists() else Path.cwd())


def supervise(command: list[str], cwd: Path) -> int:
    """Runs `dagster dev` in its own process group and stops all of it on SIGINT/SIGTERM.

    The child gets default signal handlers: one started from a non-interactive
    shell would otherwise inherit SIGINT ignored, and Dagster then ignores SIGTERM too.
    """

    def reset_signals() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    child = subprocess.Popen(command, cwd=cwd, start_new_session=True, preexec_fn=reset_signals)  # noqa: S603

    def stop(signum: int, _frame: object) -> None:
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
