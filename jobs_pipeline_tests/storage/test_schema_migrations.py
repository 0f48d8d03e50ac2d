"""The project's own schema: created by `jobs-pipeline db upgrade`, never in `public`."""

import subprocess

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from jobs_pipeline.jobs.email_delivery import email_delivery_job
from jobs_pipeline.jobs.tier_expiration import tier_expiration_job
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.resources.mail import Mailer
from jobs_pipeline.storage.app_tables import app_metadata
from jobs_pipeline.storage.engine import create_app_engine
from jobs_pipeline.storage.project_tables import PROJECT_SCHEMA, project_metadata
from jobs_pipeline.storage.schema_migrations import head_revision
from jobs_pipeline_tests.support.app_data import add_expired_user, db_now, user_row
from jobs_pipeline_tests.support.processes import JOBS_PIPELINE, cli_environment
from jobs_pipeline_tests.support.running import failure_message


def test_the_migrations_build_exactly_the_declared_tables(engine):
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "include_schemas": True,
                "include_name": lambda name, kind, parent: (
                    kind != "schema" or name == PROJECT_SCHEMA
                ),
            },
        )
        differences = [
            difference
            for difference in compare_metadata(context, project_metadata)
            # Alembic's own bookkeeping table is not part of the declared tables.
            if not (difference[0] == "remove_table" and difference[1].name == "alembic_version")
        ]
    assert differences == []


def test_db_upgrade_creates_the_schema_once_and_leaves_the_app_tables_alone(postgres, tmp_path):
    """On the app's database (its tables there, the project's schema not yet); a database
    without the app's tables is refused (`test_setup.py`).
    """
    from jobs_pipeline.storage.app_database_setup import create_app_schema

    postgres.ensure_database("upgrade_target")
    url = postgres.url("upgrade_target")
    engine = create_app_engine(url)
    create_app_schema(engine)
    app_tables_before = set(inspect(engine).get_table_names(schema="public"))
    env = cli_environment(tmp_path / "state", DATABASE_URL=url)

    first = subprocess.run(
        [str(JOBS_PIPELINE), "db", "upgrade"], env=env, capture_output=True, text=True, check=False
    )
    second = subprocess.run(
        [str(JOBS_PIPELINE), "db", "upgrade"], env=env, capture_output=True, text=True, check=False
    )

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert first.stdout.strip() == f"jobs_pipeline schema at revision {head_revision()}"
    try:
        inspector = inspect(engine)
        assert set(inspector.get_table_names(schema="public")) == app_tables_before
        assert app_tables_before >= set(app_metadata.tables)
        assert set(inspector.get_table_names(schema=PROJECT_SCHEMA)) == {
            "alembic_version",
            *(table.name for table in project_metadata.sorted_tables),
        }
    finally:
        engine.dispose()


def test_a_job_on_a_database_without_the_schema_says_which_command_fixes_it(postgres, instance):
    from jobs_pipeline.storage.app_database_setup import create_app_schema

    postgres.ensure_database("no_project_schema")
    url = postgres.url("no_project_schema")
    engine = create_app_engine(url)
    try:
        create_app_schema(engine)
        now = db_now(engine)
        with engine.begin() as c:
            user_id = add_expired_user(c, now)
        db = AppDatabase(url=url, retry_delay_seconds=0.1, max_retries=1)
        runs = [
            tier_expiration_job.execute_in_process(
                resources={"db": db}, instance=instance, raise_on_error=False
            ),
            email_delivery_job.execute_in_process(
                resources={"db": db, "mailer": Mailer()}, instance=instance, raise_on_error=False
            ),
        ]
        for execution in runs:
            assert not execution.success
            assert failure_message(execution) == (
                "the database's jobs_pipeline schema is at revision none, this code needs"
                f" {head_revision()}: run `jobs-pipeline db upgrade`"
            )
        assert user_row(engine, user_id)["tier"] == "premium"
        assert set(app_metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
