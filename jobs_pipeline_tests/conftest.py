"""A real PostgreSQL (pgserver) for the whole session, a fresh app database per test.

Each test's database is cloned from a template holding the contract's schema,
so tests are isolated and cost one `CREATE DATABASE ... TEMPLATE` each.
"""

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from psycopg import sql
from sqlalchemy import Engine

from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.storage.app_database_setup import create_app_schema
from jobs_pipeline.storage.embedded import EmbeddedPostgres, start_embedded_postgres
from jobs_pipeline.storage.engine import create_app_engine
from jobs_pipeline.storage.schema_migrations import upgrade
from jobs_pipeline_tests.support.dev_server import stop_orphaned_postgres
from jobs_pipeline_tests.support.postgres import TEMPLATE, admin_connection, make_throwaway
from jobs_pipeline_tests.support.running import temporary_instance

pytest_plugins = [
    "jobs_pipeline_tests.support.receivers",
    "jobs_pipeline_tests.support.outages",
    "jobs_pipeline_tests.support.leftovers",
    "jobs_pipeline_tests.support.deployed_runs",
    "jobs_pipeline_tests.support.daemon_down",
    "jobs_pipeline_tests.support.signals",
]

_database_numbers = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres]:
    # A folder of its own, not pytest's numbered temp folders: pytest deletes all but
    # the newest three of those, which removes a running server's data under it when
    # several sessions run at once. A short path, too: the unix socket lives in it.
    folder = Path(tempfile.mkdtemp(prefix="jp-pg-"))
    server = start_embedded_postgres(folder / "data", cleanup_mode="delete")
    make_throwaway(server)
    server.ensure_database(TEMPLATE)
    engine = create_app_engine(server.url(TEMPLATE))
    create_app_schema(engine)
    engine.dispose()
    upgrade(server.url(TEMPLATE))
    yield server
    server.server.cleanup()
    # pgserver stops the server only when it holds the last handle; stopped it is, here.
    stop_orphaned_postgres(folder / "data")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def app_db_url(postgres: EmbeddedPostgres) -> Iterator[str]:
    name = f"app_test_{next(_database_numbers)}"
    with admin_connection(postgres) as connection:
        connection.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE)
            )
        )
    yield postgres.url(name)
    with admin_connection(postgres) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def engine(app_db_url: str) -> Iterator[Engine]:
    """The test's own connections to the app database, playing the app."""
    engine = create_app_engine(app_db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db(app_db_url: str) -> AppDatabase:
    """The jobs' database resource; retries wait a tenth of a second, not five minutes."""
    return AppDatabase(url=app_db_url, retry_delay_seconds=0.1, max_retries=1)


@pytest.fixture(scope="session")
def instance() -> Iterator[dg.DagsterInstance]:
    """A real Dagster instance (temporary folder, its own run and event storage)."""
    with temporary_instance() as instance:
        yield instance


@pytest.fixture
def project_root() -> Path:
    return Path(__file__).resolve().parents[1]


LONG_MARKS = {"slow", "deployment", "browser"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that reaches a PostgreSQL (the session's, or its own) is marked `database`, so
    the fast loop (`make test-fast`: no database, no process, no browser) leaves it out.

    The files holding a long test go first (in their own order otherwise): run on several
    workers (`make test`), the long ones start at once instead of ending the run alone.
    """
    for item in items:
        if {"postgres", "own_postgres"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.database)
    long_files = {
        item.path for item in items if LONG_MARKS & {mark.name for mark in item.iter_markers()}
    }
    items.sort(key=lambda item: item.path not in long_files)
