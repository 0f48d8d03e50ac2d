"""`token` and `admin-api`: the admin API's tokens, and serving it."""

import os
import sys
from typing import Any

from jobs_pipeline.interfaces.cli.common import UsageError, print_table, utc_minute
from jobs_pipeline.interfaces.cli.runs import prepare_app_database
from jobs_pipeline.storage.embedded import (
    fill_environment,
)


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
