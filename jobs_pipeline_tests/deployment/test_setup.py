"""A deployment set up in one pass (`jobs-pipeline setup`), and checked (`doctor`), as a new
operator runs them: the installed command, a real PostgreSQL for the app and for Dagster.
"""

import itertools
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import yaml
from psycopg import sql
from sqlalchemy import inspect

from jobs_pipeline.interfaces.launching.instance import project_pools
from jobs_pipeline.storage.app_tables import app_metadata
from jobs_pipeline.storage.embedded import INSTANCE_CONFIG, EmbeddedPostgres
from jobs_pipeline.storage.engine import create_app_engine
from jobs_pipeline.storage.schema_migrations import current_revision, head_revision
from jobs_pipeline_tests.support.processes import cli_environment, run_cli

_numbers = itertools.count()


@pytest.fixture
def empty_app_db_url(postgres: EmbeddedPostgres) -> Iterator[str]:
    """A database with none of the app's tables (not the app's, or a trial's new one)."""
    name = f"empty_app_{next(_numbers)}"
    postgres.ensure_database(name)
    yield postgres.url(name)
    with psycopg.connect(
        host=str(postgres.pgdata), user="postgres", dbname="postgres", autocommit=True
    ) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def environment(tmp_path: Path, app_url: str, dagster_url: str) -> dict[str, str]:
    return cli_environment(
        tmp_path / "state",
        DATABASE_URL=app_url,
        DAGSTER_HOME=str(tmp_path / "dagster_home"),
        DAGSTER_POSTGRES_URL=dagster_url,
    )


def tables_in(url: str, schema: str | None = None) -> set[str]:
    engine = create_app_engine(url)
    try:
        return set(inspect(engine).get_table_names(schema=schema))
    finally:
        engine.dispose()


def revision_of(url: str) -> str | None:
    engine = create_app_engine(url)
    try:
        with engine.connect() as connection:
            return current_revision(connection)
    finally:
        engine.dispose()


def pool_limits(home: Path, dagster_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", dagster_url)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return {limit.name: limit.limit for limit in instance.event_log_storage.get_pool_limits()}


def test_setup_refuses_a_database_without_the_apps_tables_and_changes_nothing(
    tmp_path, empty_app_db_url, dagster_db_url
):
    env = environment(tmp_path, empty_app_db_url, dagster_db_url)

    setup = run_cli("setup", env=env, cwd=tmp_path)
    upgrade = run_cli("db", "upgrade", env=env, cwd=tmp_path)

    for refused in (setup, upgrade):
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "the app's tables are missing from this database" in refused.stderr
        assert "users" in refused.stderr and "promo_codes" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert "--create-app-tables" in setup.stderr
    assert tables_in(empty_app_db_url) == set()
    assert tables_in(empty_app_db_url, "jobs_pipeline") == set()
    assert not (tmp_path / "dagster_home" / "dagster.yaml").exists()


def test_setup_prepares_a_trial_deployment_in_one_pass_and_again_changes_nothing(
    tmp_path, empty_app_db_url, dagster_db_url, monkeypatch
):
    env = environment(tmp_path, empty_app_db_url, dagster_db_url)
    home = tmp_path / "dagster_home"

    first = run_cli("setup", "--create-app-tables", env=env, cwd=tmp_path)
    again = run_cli("setup", env=env, cwd=tmp_path)

    assert first.returncode == 0, first.stdout + first.stderr
    assert again.returncode == 0, again.stdout + again.stderr
    assert set(app_metadata.tables) <= tables_in(empty_app_db_url)
    assert revision_of(empty_app_db_url) == head_revision()
    assert pool_limits(home, dagster_db_url, monkeypatch) == dict.fromkeys(project_pools(), 1)
    workspace = yaml.safe_load((home / "workspace.yaml").read_text())
    assert workspace == {
        "load_from": [
            {"grpc_server": {"host": "127.0.0.1", "port": 4000, "location_name": "jobs_pipeline"}}
        ]
    }
    assert (home / "dagster.yaml").read_text() == INSTANCE_CONFIG.read_text()
    for pool in project_pools():
        assert f"pool {pool}: limit 1\n" in first.stdout
        assert f"pool {pool}: limit 1 (kept)\n" in again.stdout
    assert "laid the app's schema" in first.stdout
    assert "the app's tables are there" in again.stdout


def test_setup_keeps_a_limit_the_operator_set(tmp_path, app_db_url, dagster_db_url, monkeypatch):
    env = environment(tmp_path, app_db_url, dagster_db_url)
    home = tmp_path / "dagster_home"
    assert run_cli("setup", env=env, cwd=tmp_path).returncode == 0
    pool = project_pools()[0]
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", dagster_db_url)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.event_log_storage.set_concurrency_slots(pool, 3)

    again = run_cli("setup", env=env, cwd=tmp_path)

    assert again.returncode == 0, again.stderr
    assert f"pool {pool}: limit 3 (kept)" in again.stdout
    assert pool_limits(home, dagster_db_url, monkeypatch)[pool] == 3


def test_a_bad_code_server_address_is_a_usage_error(tmp_path, app_db_url, dagster_db_url):
    env = environment(tmp_path, app_db_url, dagster_db_url)

    bad = run_cli("setup", "--code-server", "localhost", env=env, cwd=tmp_path)

    assert bad.returncode == 2
    assert "is not HOST:PORT" in bad.stderr


def test_doctor_on_a_deployment_whose_processes_are_not_started_says_what_to_start(
    tmp_path, app_db_url, dagster_db_url
):
    env = environment(tmp_path, app_db_url, dagster_db_url)
    assert run_cli("setup", "--code-server", "127.0.0.1:1", env=env, cwd=tmp_path).returncode == 0

    checked = run_cli("doctor", env=env, cwd=tmp_path)

    assert checked.returncode == 1, checked.stdout + checked.stderr
    failing = [line for line in checked.stdout.splitlines() if line.startswith("FAIL")]
    (daemon,) = [line for line in failing if "no recent heartbeat" in line]
    assert "QUEUED_RUN_COORDINATOR (never seen)" in daemon and "dagster-daemon run" in daemon
    assert any("code server 127.0.0.1:1 does not answer" in line for line in failing)
    passing = [line for line in checked.stdout.splitlines() if line.startswith("ok")]
    assert any(line.startswith("ok    pools: writes_") for line in passing), checked.stdout
    assert any("schema jobs_pipeline at" in line for line in passing), checked.stdout


def test_doctor_without_an_instance_is_a_usage_error(tmp_path, app_db_url):
    env = cli_environment(tmp_path / "state", DATABASE_URL=app_db_url)

    checked = run_cli("doctor", env=env, cwd=tmp_path)

    assert checked.returncode == 2
    assert "set DAGSTER_HOME" in checked.stderr
