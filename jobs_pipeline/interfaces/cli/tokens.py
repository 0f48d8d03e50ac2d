"""`token`, `admin-api` and `ui-actions`: the admin API's tokens, serving it (and the door
in front of the UI), and what was done through the door.
"""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from jobs_pipeline.formats import utc_minute
from jobs_pipeline.interfaces.cli.common import UsageError, print_table
from jobs_pipeline.interfaces.cli.runs import prepare_app_database
from jobs_pipeline.storage.embedded import (
    fill_environment,
)

if TYPE_CHECKING:  # imported where used: a command that needs no database loads none of this
    from sqlalchemy import Engine


@contextmanager
def project_database() -> Iterator["Engine"]:
    """The app database, its project schema current (upgraded when it is the embedded
    one); its connections closed on the way out.
    """
    from jobs_pipeline.storage.engine import create_app_engine
    from jobs_pipeline.storage.schema_migrations import require_current_schema

    prepare_app_database(schema=True)
    try:
        engine = create_app_engine(os.environ["DATABASE_URL"])
    except ValueError as error:
        raise UsageError(str(error)) from None
    try:
        with engine.connect() as connection:
            try:
                require_current_schema(connection)
            except Exception as outdated:
                raise UsageError(str(outdated)) from None
        yield engine
    finally:
        engine.dispose()


def command_token_create(email: str) -> int:
    from jobs_pipeline.storage.api_tokens import UnknownUser, issue_token

    with project_database() as engine, engine.begin() as connection:
        try:
            token_id, token = issue_token(connection, email)
        except UnknownUser as missing:
            raise UsageError(str(missing)) from None
    print(
        f"token {token_id} for {email.strip()} (`token list` shows it, `token revoke --id"
        f" {token_id}` revokes it); the token is shown only now:",
        file=sys.stderr,
    )
    print(token)
    return 0


def command_token_list() -> int:
    from jobs_pipeline.storage.api_tokens import list_tokens

    with project_database() as engine, engine.connect() as connection:
        tokens = list_tokens(connection)
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


def command_token_revoke(token_id: int) -> int:
    from jobs_pipeline.storage.api_tokens import revoke_token

    with project_database() as engine, engine.begin() as connection:
        revoked = revoke_token(connection, token_id)
    if not revoked:
        raise UsageError(f"no live token with id {token_id}")
    print(f"token {token_id} revoked")
    return 0


def command_admin_api(
    host: str,
    port: int,
    wait_seconds: float,
    *,
    ui: str | None,
    ui_read_only: str | None,
    ui_sso_email_header: str | None,
) -> int:
    import uvicorn

    from jobs_pipeline.interfaces.admin_api import create_app
    from jobs_pipeline.interfaces.door.graphql_passage import GRAPHQL_BODY_LIMIT
    from jobs_pipeline.interfaces.launching.instance import open_instance

    door = door_settings(ui, ui_read_only, ui_sso_email_header)
    log_to_stderr()
    with project_database() as engine:
        if not os.environ.get("DAGSTER_HOME"):
            raise UsageError(
                "the admin API starts runs on a Dagster instance's queue: set DAGSTER_HOME"
                " (docs/deploying.md), or start `jobs-pipeline dev` first and use its instance"
            )
        fill_environment(dagster_storage=True)
        with open_instance() as instance:
            app = create_app(
                engine,
                instance,
                wait_seconds=wait_seconds,
                stopping=lambda: server.should_exit,
                door=door,
            )
            # After SIGTERM, requests waiting for their runs are answered 202 (the runs go
            # on); any other request in flight gets a few seconds. The door reads who is
            # asking from nginx's own headers, never from a client's X-Forwarded-*
            # (door/arrival.py); websocket messages are capped like GraphQL requests.
            config = uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level="info",
                timeout_graceful_shutdown=5,
                proxy_headers=False,
                ws_max_size=GRAPHQL_BODY_LIMIT,
            )
            server = uvicorn.Server(config)
            server.run()
    return 0


def door_settings(ui: str | None, ui_read_only: str | None, sso_email_header: str | None) -> Any:
    """The door's settings when `--ui` asks for it; a usage error names what is missing."""
    from jobs_pipeline.interfaces.door.session import DoorMisconfigured, DoorSettings

    if ui is None and ui_read_only is None:
        if sso_email_header is not None:
            raise UsageError("--ui-sso-email-header goes with --ui and --ui-read-only")
        return None
    if ui is None or ui_read_only is None:
        raise UsageError(
            "the door needs both webservers: --ui (the admins') and --ui-read-only (the"
            " viewers', started with --read-only)"
        )
    try:
        return DoorSettings.from_environment(ui, ui_read_only, sso_email_header)
    except DoorMisconfigured as problem:
        raise UsageError(str(problem)) from None


def command_ui_actions(limit: int) -> int:
    from jobs_pipeline.storage.ui_actions import recent_actions

    if limit < 1:
        raise UsageError("--limit takes a positive number")
    with project_database() as engine, engine.connect() as connection:
        actions = recent_actions(connection, limit)
    rows = [("ID", "WHEN (UTC)", "WHO", "WHAT", "RUNS", "OUTCOME")]
    rows += [
        (
            str(action.action_id),
            utc_minute(action.acted_at),
            action.email,
            action.summary,
            what_it_made(action.run_ids, action.backfill_id),
            action.outcome,
        )
        for action in actions
    ]
    print_table(rows)
    return 0


def what_it_made(run_ids: list[str], backfill_id: str | None) -> str:
    made = [*run_ids, *([f"backfill {backfill_id}"] if backfill_id else [])]
    return ", ".join(made) or "-"


def log_to_stderr() -> None:
    """The project's own log lines (who signed in, what the door recorded, refusals) on
    stderr beside uvicorn's, which configures only its own loggers.
    """
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    project = logging.getLogger("jobs_pipeline")
    project.addHandler(handler)
    project.setLevel(logging.INFO)
    project.propagate = False
