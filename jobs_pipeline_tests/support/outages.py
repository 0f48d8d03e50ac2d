"""A PostgreSQL server of a test's own, which the test may stop and start again."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs_pipeline.storage.app_database_setup import create_app_schema
from jobs_pipeline.storage.embedded import EmbeddedPostgres, start_embedded_postgres
from jobs_pipeline.storage.engine import create_app_engine
from jobs_pipeline.storage.schema_migrations import upgrade
from jobs_pipeline_tests.support.dev_server import stop_orphaned_postgres


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A server of this test's own, which it may stop and start."""
    server = start_embedded_postgres(tmp_path / "pg", cleanup_mode="stop")
    server.ensure_database("app")
    engine = create_app_engine(server.url("app"))
    create_app_schema(engine)
    engine.dispose()
    upgrade(server.url("app"))
    yield server
    server.server.cleanup()
    # A test that stopped the server and started it again holds the new one's handle:
    # whatever runs on the folder now is stopped here, whatever the test did.
    stop_orphaned_postgres(server.pgdata)


def stop(server: EmbeddedPostgres) -> None:
    server.server.cleanup()


def start_again(server: EmbeddedPostgres) -> EmbeddedPostgres:
    return start_embedded_postgres(server.pgdata, cleanup_mode="stop")
