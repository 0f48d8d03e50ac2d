"""The installed `jobs-pipeline` command, run as a real subprocess against a real PostgreSQL."""

import getpass
import shutil
import subprocess
import uuid
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from sqlalchemy import func, select, text

from jobs_pipeline.resources.database import writer_lock_key
from jobs_pipeline.storage.app_tables import global_config, users
from jobs_pipeline.storage.embedded import INSTANCE_CONFIG
from jobs_pipeline.storage.project_tables import change_ledger
from jobs_pipeline_tests.support.app_data import (
    add_expired_user,
    add_user,
    db_now,
    set_override,
    table_rows,
    user_row,
)
from jobs_pipeline_tests.support.deadlines import deadline, wait_until
from jobs_pipeline_tests.support.processes import JOBS_PIPELINE, cli_environment
from jobs_pipeline_tests.support.processes import run_cli as jobs_pipeline
from jobs_pipeline_tests.support.running import result_of_run

# The installed command, run as an operator runs it.
pytestmark = pytest.mark.processes

SCHEDULES = {
    "tier-expiration": "15 0 * * *",
    "global-override-check": "0 * * * *",
    "promo-cleanup": "0 2 * * 0",
    "discipline-stats-rollup": "0 1 * * *",
    "trial-reminder": "0 9 * * *",
    "email-delivery": "*/5 * * * *",
}


def user_count(engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(users)).scalar_one())


@pytest.fixture
def env(tmp_path: Path, app_db_url: str) -> dict[str, str]:
    """The subprocess's environment: the test's database, a private state folder."""
    return cli_environment(tmp_path / "state", DATABASE_URL=app_db_url)


@pytest.mark.parametrize("spelling", ["tier-expiration", "tier_expiration"])
def test_run_downgrades_expired_users_and_ends_with_the_result(engine, env, tmp_path, spelling):
    now = db_now(engine)
    with engine.begin() as c:
        expired = [add_expired_user(c, now) for _ in range(3)]
        still_paid = add_user(c, tier="pro", tier_expires_at=None, tier_source="admin")

    completed = jobs_pipeline("run", spelling, env=env, cwd=tmp_path)

    assert completed.returncode == 0, completed.stderr[-3000:]
    result = result_of_run(completed, "tier-expiration")
    assert (result["processed"], result["failed"], result["skipped"]) == (3, 0, 0)
    assert {user_row(engine, u)["tier"] for u in expired} == {"free"}
    assert user_row(engine, still_paid)["tier"] == "pro"
    # Dagster's own log goes to stderr, not into the result on stdout.
    assert "RUN_SUCCESS" in completed.stderr
    # The run's id: on stderr before the run starts, and in the result.
    assert completed.stderr.index(f"[tier-expiration] Run {result['runId']}") < (
        completed.stderr.index("RUN_SUCCESS")
    )
    with engine.connect() as c:
        ledger_runs = set(c.execute(select(change_ledger.c.run_id)).scalars())
    assert ledger_runs == {result["runId"]}
    assert "RUN_SUCCESS" not in completed.stdout


def test_dry_run_changes_nothing_and_says_so(engine, env, tmp_path):
    now = db_now(engine)
    with engine.begin() as c:
        for _ in range(2):
            add_expired_user(c, now)
        set_override(c, {"tier": "pro", "expires_at": "2020-01-01T00:00:00Z"})
    users_before = table_rows(engine, users)
    config_before = table_rows(engine, global_config)

    tiers = jobs_pipeline("run", "tier-expiration", "--dry-run", env=env, cwd=tmp_path)
    override = jobs_pipeline("run", "global-override-check", "--dry-run", env=env, cwd=tmp_path)

    assert tiers.returncode == 0, tiers.stderr[-3000:]
    assert override.returncode == 0, override.stderr[-3000:]
    tiers_result = result_of_run(tiers, "tier-expiration")
    assert tiers_result["dryRun"] is True
    assert tiers_result["wouldProcess"] == 2
    override_result = result_of_run(override, "global-override-check")
    assert (override_result["dryRun"], override_result["action"]) == (True, "wouldClear")
    assert table_rows(engine, users) == users_before
    assert table_rows(engine, global_config) == config_before


def test_an_unknown_job_is_a_usage_error_naming_the_jobs(env, tmp_path):
    completed = jobs_pipeline("run", "tier-expirations", env=env, cwd=tmp_path)

    assert completed.returncode == 2
    assert "tier-expirations" in completed.stderr
    for name in SCHEDULES:
        assert name in completed.stderr
    assert "Traceback" not in completed.stderr
    assert completed.stdout == ""


def test_user_is_refused_for_other_jobs(engine, env, tmp_path):
    now = db_now(engine)
    with engine.begin() as c:
        expired = add_expired_user(c, now, email="someone@example.com")

    completed = jobs_pipeline(
        "run", "tier-expiration", "--user", "someone@example.com", env=env, cwd=tmp_path
    )

    assert completed.returncode == 2
    assert "--user" in completed.stderr
    assert "discipline-stats-rollup" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert completed.stdout == ""
    # Refused before anything ran.
    assert user_row(engine, expired)["tier"] == "premium"


def test_a_failing_run_exits_non_zero_with_the_reason_and_no_traceback(engine, env, tmp_path):
    with engine.begin() as c:
        set_override(c, {"tier": "gold", "expires_at": "2020-01-01T00:00:00Z"})
    before = table_rows(engine, global_config)

    completed = jobs_pipeline("run", "global-override-check", env=env, cwd=tmp_path)

    assert completed.returncode not in (0, 2), completed.returncode
    assert "global_tier_override" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert "[global-override-check] Result:" not in completed.stdout
    assert table_rows(engine, global_config) == before


def with_password(url: str, password: str) -> str:
    assert url.startswith("postgresql://postgres@/"), url
    return url.replace("postgres@", f"postgres:{password}@", 1)


def test_the_database_password_is_never_printed(engine, app_db_url, tmp_path):
    password = "Sup3rSecretPw"
    env = cli_environment(tmp_path / "state", DATABASE_URL=with_password(app_db_url, password))
    now = db_now(engine)
    with engine.begin() as c:
        expired = add_expired_user(c, now)

    completed = jobs_pipeline("run", "tier-expiration", env=env, cwd=tmp_path)

    assert completed.returncode == 0, completed.stderr[-3000:]
    assert result_of_run(completed, "tier-expiration")["processed"] == 1
    assert user_row(engine, expired)["tier"] == "free"
    assert password not in completed.stdout
    assert password not in completed.stderr


def test_the_password_is_not_printed_when_the_connection_fails(app_db_url, tmp_path):
    password = "Sup3rSecretPw"
    missing = with_password(app_db_url, password).replace("/app_test_", "/no_such_database_", 1)
    env = cli_environment(tmp_path / "state", DATABASE_URL=missing)

    completed = jobs_pipeline("run", "tier-expiration", env=env, cwd=tmp_path)

    assert completed.returncode == 1
    assert "no_such_database_" in completed.stderr
    assert password not in completed.stdout
    assert password not in completed.stderr
    assert "Traceback" not in completed.stderr


def test_runs_go_into_the_instance_history_and_list_shows_them(
    postgres, env, tmp_path, project_root, monkeypatch
):
    dagster_db = f"dagster_cli_{uuid.uuid4().hex[:8]}"
    postgres.ensure_database(dagster_db)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(INSTANCE_CONFIG, home / "dagster.yaml")
    storage_url = postgres.url(dagster_db, "postgresql+psycopg2")
    env = {**env, "DAGSTER_HOME": str(home), "DAGSTER_POSTGRES_URL": storage_url}

    ran = jobs_pipeline("run", "promo-cleanup", env=env, cwd=tmp_path)

    assert ran.returncode == 0, ran.stderr[-3000:]
    assert set(result_of_run(ran, "promo-cleanup")) >= {"codesDeactivated", "redemptionsDeleted"}
    # No daemon serves this instance: the CLI says so, and runs the job itself.
    assert "no Dagster daemon serves the instance in" in ran.stderr
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", storage_url)
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(job_name="promo_cleanup"))
        assert len(runs) == 1
        (run,) = runs
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags.get("jobs_pipeline/triggered_by") == f"cli:{getpass.getuser()}"
        assert instance.get_runs(filters=dg.RunsFilter(job_name="tier_expiration")) == []
    dry = jobs_pipeline("run", "global-override-check", "--dry-run", env=env, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr[-3000:]

    listed = jobs_pipeline("list", env=env, cwd=tmp_path)

    assert listed.returncode == 0, listed.stderr[-3000:]
    rows = {line.split()[0]: line for line in listed.stdout.splitlines() if line.strip()}
    for name, cron in SCHEDULES.items():
        assert name in rows, listed.stdout
        assert cron in rows[name]
    assert "SUCCESS" in rows["promo-cleanup"]
    assert run.run_id[:8] in rows["promo-cleanup"]
    assert "SUCCESS" not in rows["tier-expiration"]
    assert "dry run" not in rows["promo-cleanup"]
    # The last run of global-override-check was a dry run, and the list says so.
    assert "dry run SUCCESS" in rows["global-override-check"]
    assert "high" in rows["tier-expiration"] and "PRIORITY" in listed.stdout


def test_demo_data_fills_an_empty_database_once(engine, env, tmp_path):
    assert user_count(engine) == 0

    first = jobs_pipeline("demo-data", env=env, cwd=tmp_path)

    assert first.returncode == 0, first.stderr[-3000:]
    assert user_count(engine) == 300
    snapshot = table_rows(engine, users)

    second = jobs_pipeline("demo-data", env=env, cwd=tmp_path)

    assert second.returncode == 2
    assert "already has" in second.stderr
    assert "Traceback" not in second.stderr
    assert table_rows(engine, users) == snapshot


def public_tables(postgres, database: str) -> list[str]:
    with psycopg.connect(host=str(postgres.pgdata), user="postgres", dbname=database) as c:
        rows = c.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return [row[0] for row in rows]


def test_demo_data_never_creates_the_apps_tables_in_a_database_it_does_not_own(postgres, tmp_path):
    database = f"cli_no_tables_{uuid.uuid4().hex[:8]}"
    postgres.ensure_database(database)
    env = cli_environment(tmp_path / "state", DATABASE_URL=postgres.url(database))

    completed = jobs_pipeline("demo-data", env=env, cwd=tmp_path)

    assert completed.returncode == 2
    assert "tables are missing" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert public_tables(postgres, database) == []


def test_run_without_database_url_uses_the_embedded_database(tmp_path_factory):
    # A short folder: the embedded server's unix socket lives inside it.
    state = tmp_path_factory.mktemp("cli") / "s"
    env = cli_environment(state)

    completed = jobs_pipeline("run", "tier-expiration", env=env, cwd=state.parent)

    assert completed.returncode == 0, completed.stderr[-3000:]
    assert result_of_run(completed, "tier-expiration")["processed"] == 0
    assert (state / "pgdata" / "PG_VERSION").exists()
    # The server stops with the last process using it.
    assert not (state / "pgdata" / "postmaster.pid").exists()


def test_the_rollup_runs_every_shard_and_one_user_on_request(env, tmp_path, engine):
    from jobs_pipeline_tests.support.journal_data import (
        as_records,
        expected_stats,
        make_journals,
        stored_stats,
    )

    user_ids = make_journals(engine, seed=21, user_count=25)

    everyone = jobs_pipeline("run", "discipline-stats-rollup", env=env, cwd=tmp_path)
    assert everyone.returncode == 0, everyone.stderr[-3000:]
    assert result_of_run(everyone, "discipline-stats-rollup")["usersUpdated"] == 25
    assert as_records(stored_stats(engine)) == as_records(expected_stats(engine))

    with engine.connect() as c:
        email = c.execute(select(users.c.email).where(users.c.id == user_ids[3])).scalar_one()
    one = jobs_pipeline("run", "discipline_stats_rollup", "--user", email, env=env, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    refreshed = result_of_run(one, "discipline-stats-rollup")
    # The user's counts have not changed since the first run: computed, not rewritten.
    assert (refreshed["usersComputed"], refreshed["usersUpdated"]) == (1, 0)


def test_the_rollup_refuses_an_unknown_user(env, tmp_path, engine):
    unknown = jobs_pipeline(
        "run", "discipline-stats-rollup", "--user", "ghost@example.com", env=env, cwd=tmp_path
    )
    assert unknown.returncode == 2
    assert "no user with id or email 'ghost@example.com'" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_a_run_past_the_queue_waits_for_another_writer_of_its_table(engine, env, tmp_path):
    """No daemon, a temporary instance: only the database's writer lock stands between
    this run and another writer of `users`, and it holds: the run waits, writes nothing
    meanwhile, then does its work.
    """
    now = db_now(engine)
    with engine.begin() as c:
        expired = add_expired_user(c, now)
    with engine.connect() as other_writer:
        other_writer.execute(select(func.pg_advisory_lock(*writer_lock_key("users"))))
        other_writer.commit()
        run = subprocess.Popen(
            [str(JOBS_PIPELINE), "run", "tier-expiration"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for_lock_waiter(engine)
            assert user_row(engine, expired)["tier"] == "premium"
        finally:
            other_writer.execute(select(func.pg_advisory_unlock(*writer_lock_key("users"))))
            other_writer.commit()
        stdout, stderr = run.communicate(timeout=deadline(300))

    assert run.returncode == 0, stderr[-3000:]
    assert "which is writing users" in stderr, stderr[-3000:]
    last = subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)
    assert result_of_run(last, "tier-expiration")["processed"] == 1
    assert user_row(engine, expired)["tier"] == "free"


def wait_for_lock_waiter(engine, deadline_s: float = 120) -> None:
    """Until a run's lock connection (named after its run) is there, and has tried: its
    last statement is no longer the one that named it.
    """
    tried = text(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'jobs_pipeline run %'"
        " AND query NOT LIKE '%set_config%'"
    )

    def has_tried() -> bool:
        with engine.connect() as c:
            return bool(c.execute(tried).scalar_one())

    wait_until(has_tried, deadline_s, "a run came to wait for the writer lock", interval=0.5)
