"""The command line's parser: each command names the function that runs it."""

import argparse

from jobs_pipeline.deployment.run_launchers import DEFAULT_RUNS_IN, RUNS_IN
from jobs_pipeline.interfaces.cli.database import command_db_upgrade, command_demo_data
from jobs_pipeline.interfaces.cli.deployment import command_doctor, command_metrics, command_setup
from jobs_pipeline.interfaces.cli.dev import command_dev
from jobs_pipeline.interfaces.cli.ledger import command_undo, command_why, command_why_run
from jobs_pipeline.interfaces.cli.runs import command_list, command_run
from jobs_pipeline.interfaces.cli.tokens import (
    command_admin_api,
    command_token_create,
    command_token_list,
    command_token_revoke,
    command_ui_actions,
)

EXAMPLES = """\
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobs-pipeline",
        description="The trading journal's database maintenance jobs, on Dagster.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    # Each command's parser sets `command`, the function that runs it with the arguments.
    commands = parser.add_subparsers(dest="name", required=True, metavar="COMMAND")

    dev = commands.add_parser("dev", help="embedded PostgreSQL, demo data, Dagster UI and daemon")
    dev.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=3000, help="UI port (default 3000)")
    dev.set_defaults(command=lambda args: command_dev(args.host, args.port))

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
    run.set_defaults(
        command=lambda args: command_run(
            args.job,
            dry_run=args.dry_run,
            user=args.user,
            allow_large=args.allow_large,
            as_of=args.as_of,
        )
    )

    listing = commands.add_parser("list", help="the jobs, their schedules and the last run of each")
    listing.set_defaults(command=lambda _args: command_list())
    demo_data = commands.add_parser("demo-data", help="fill an empty app database with demo data")
    demo_data.set_defaults(command=lambda _args: command_demo_data())

    database = commands.add_parser("db", help="the project's own schema `jobs_pipeline`")
    database_commands = database.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = database_commands.add_parser("upgrade", help="create or upgrade the schema (Alembic)")
    upgrade.set_defaults(command=lambda _args: command_db_upgrade())

    token = commands.add_parser("token", help="admin-API tokens")
    token_commands = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = token_commands.add_parser("create", help="issue a token for an existing app user")
    create.add_argument("--email", required=True, help="the app user's email")
    create.set_defaults(command=lambda args: command_token_create(args.email))
    tokens = token_commands.add_parser(
        "list", help="every token: id, email, created, last used, revoked"
    )
    tokens.set_defaults(command=lambda _args: command_token_list())
    revoke = token_commands.add_parser("revoke", help="revoke a token by its id (see token list)")
    revoke.add_argument("--id", type=int, required=True, dest="token_id", help="the token's id")
    revoke.set_defaults(command=lambda args: command_token_revoke(args.token_id))

    undo = commands.add_parser("undo", help="take back what one run changed")
    undo.add_argument("run_id", metavar="RUN_ID", help="the run whose changes to take back")
    undo.add_argument("--dry-run", action="store_true", help="report what would be restored")
    undo.set_defaults(command=lambda args: command_undo(args.run_id, dry_run=args.dry_run))

    why = commands.add_parser("why", help="every change the jobs made to a user, or in a run")
    subject = why.add_mutually_exclusive_group(required=True)
    subject.add_argument("--user", metavar="EMAIL_OR_ID", help="a user's changes, and why")
    subject.add_argument("--run", metavar="RUN_ID", help="what one run changed (as `run` prints)")
    why.set_defaults(
        command=lambda args: command_why_run(args.run) if args.run else command_why(args.user)
    )

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
    setup.add_argument(
        "--runs-in",
        choices=RUNS_IN,
        default=DEFAULT_RUNS_IN,
        help="where runs execute: the code server's run workers (default), a container"
        " each (Docker), or a fleet of Celery workers; sets the dagster.yaml written",
    )
    setup.set_defaults(
        command=lambda args: command_setup(
            args.code_server, create_app_tables=args.create_app_tables, runs_in=args.runs_in
        )
    )
    doctor = commands.add_parser(
        "doctor", help="check a deployment; exit status 1 if anything is wrong"
    )
    doctor.set_defaults(command=lambda _args: command_doctor())
    metrics = commands.add_parser(
        "metrics", help="serve the deployment's Prometheus metrics (GET /metrics)"
    )
    metrics.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    # 9464: in the range exporters take by convention (Prometheus' list of default ports).
    metrics.add_argument("--port", type=int, default=9464, help="port (default 9464)")
    metrics.set_defaults(command=lambda args: command_metrics(args.host, args.port))

    api = commands.add_parser("admin-api", help="serve the admin HTTP API")
    api.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    api.add_argument("--port", type=int, default=8088, help="port (default 8088)")
    api.add_argument(
        "--wait-seconds",
        type=float,
        default=30.0,
        help="how long a request waits for its run before answering 202 (default 30)",
    )
    api.add_argument(
        "--ui",
        metavar="URL",
        help=(
            "serve the door in front of the Dagster UI (nginx, docs/deploying.md): the admins'"
            " webserver, e.g. http://127.0.0.1:3000; needs UI_SESSION_SECRET"
        ),
    )
    api.add_argument(
        "--ui-read-only",
        metavar="URL",
        help="with --ui: the viewers' webserver (dagster-webserver --read-only)",
    )
    api.add_argument(
        "--ui-sso-email-header",
        metavar="HEADER",
        help=(
            "with --ui, behind a company sign-on's proxy: take the user's email from this"
            " request header (e.g. X-Forwarded-Email) instead of a token's sign-in"
        ),
    )
    api.set_defaults(
        command=lambda args: command_admin_api(
            args.host,
            args.port,
            args.wait_seconds,
            ui=args.ui,
            ui_read_only=args.ui_read_only,
            ui_sso_email_header=args.ui_sso_email_header,
        )
    )

    ui_actions = commands.add_parser(
        "ui-actions", help="what was done in the Dagster UI through the door, and by whom"
    )
    ui_actions.add_argument(
        "--limit", type=int, default=50, help="how many of the latest to show (default 50)"
    )
    ui_actions.set_defaults(command=lambda args: command_ui_actions(args.limit))
    return parser
