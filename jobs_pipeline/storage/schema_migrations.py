"""`jobs-pipeline db upgrade`: the project's own schema, migrated by Alembic.

Jobs that use the project's tables check the schema is at the code's revision
before they write, and fail with the command to run when it is not.
"""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from jobs_pipeline.storage.app_database_setup import setup_engine
from jobs_pipeline.storage.project_tables import PROJECT_SCHEMA

MIGRATIONS = Path(__file__).parent / "migrations"


class ProjectSchemaOutdated(Exception):
    """The database's `jobs_pipeline` schema is missing or behind the code; the message
    says which command fixes it.
    """


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("the project's migrations have no head revision")
    return head


def upgrade(url: str) -> str:
    """Creates or upgrades the `jobs_pipeline` schema; returns the revision it is at."""
    config = alembic_config()
    with setup_engine(url) as engine, engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return head_revision()


def current_revision(connection: Connection) -> str | None:
    exists = connection.execute(
        text("SELECT to_regclass(:table)"), {"table": f"{PROJECT_SCHEMA}.alembic_version"}
    ).scalar()
    if exists is None:
        return None
    version = connection.execute(
        text(f"SELECT version_num FROM {PROJECT_SCHEMA}.alembic_version")  # noqa: S608
    ).scalar()
    return str(version) if version is not None else None


def require_current_schema(connection: Connection) -> None:
    current, head = current_revision(connection), head_revision()
    if current != head:
        raise ProjectSchemaOutdated(
            f"the database's {PROJECT_SCHEMA} schema is at revision {current or 'none'},"
            f" this code needs {head}: run `jobs-pipeline db upgrade`"
        )
