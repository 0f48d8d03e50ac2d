"""A lost or refused database connection retries the step; nothing is done twice."""

import threading
import time

import dagster as dg
from sqlalchemy import Engine, func, select, text

from jobs_pipeline.jobs.global_override_check import global_override_check_job
from jobs_pipeline.jobs.tier_expiration import tier_expiration_job
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.storage.app_tables import users
from jobs_pipeline.storage.engine import create_app_engine
from jobs_pipeline_tests.support.app_data import (
    add_expired_user,
    db_now,
    set_override,
    slow_trigger,
)
from jobs_pipeline_tests.support.deadlines import deadline, finish, wait_until
from jobs_pipeline_tests.support.outages import start_again, stop
from jobs_pipeline_tests.support.running import job_result, log_messages, run_job

# Every downgrade sleeps a little, so the run is still going when the database goes.
SLOW_DOWNGRADES = slow_trigger("users", "BEFORE UPDATE", 0.03)


def tiers(engine: Engine) -> dict[str, int]:
    with engine.connect() as c:
        return dict(c.execute(select(users.c.tier, func.count()).group_by(users.c.tier)).all())


def downgraded_lines(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [
        m
        for m in (r.user_message for r in instance.all_logs(run_id))
        if m.startswith("[tier-expiration] Downgraded user")
    ]


def wait_until_some_are_downgraded(url: str, deadline_s: float = 60) -> None:
    """The run is under way: its first batches are committed, most are still to come."""
    engine = create_app_engine(url)
    try:
        give_up = time.monotonic() + deadline(deadline_s)
        while tiers(engine).get("free", 0) < 5:
            assert time.monotonic() < give_up, "the run downgraded no one"
            time.sleep(0.05)
    finally:
        engine.dispose()


def retries(instance: dg.DagsterInstance, run_id: str) -> int:
    return len(instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY))


def test_a_database_stopped_mid_run_is_retried_and_nothing_is_done_twice(own_postgres, instance):
    url = own_postgres.url("app")
    engine = create_app_engine(url)
    now = db_now(engine)
    with engine.begin() as c:
        for _ in range(60):
            add_expired_user(c, now)
        c.execute(text(SLOW_DOWNGRADES))
    engine.dispose()
    db = AppDatabase(url=url, retry_delay_seconds=1.5, max_retries=3)
    outcome: dict[str, dg.ExecuteInProcessResult] = {}
    runner = threading.Thread(
        target=lambda: outcome.update(run=run_job(tier_expiration_job, db, instance, batch_size=5))
    )

    runner.start()
    wait_until_some_are_downgraded(url)
    stop(own_postgres)
    restarted = start_again(own_postgres)
    finish(runner, 600)

    execution = outcome["run"]
    assert execution.success
    assert retries(instance, execution.run_id) >= 1
    engine = create_app_engine(restarted.url("app"))
    try:
        assert tiers(engine) == {"free": 60}
    finally:
        engine.dispose()
    lines = downgraded_lines(instance, execution.run_id)
    assert len(lines) == len(set(lines)) == 60
    assert job_result(execution)["processed"] < 60  # the last attempt did only what was left


def test_a_refused_connection_is_retried_until_the_database_is_back(own_postgres, instance):
    url = own_postgres.url("app")
    engine = create_app_engine(url)
    expires = (db_now(engine).replace(microsecond=0)).isoformat()
    with engine.begin() as c:
        set_override(c, {"tier": "pro", "expires_at": expires})
    engine.dispose()
    stop(own_postgres)
    # Retried for as long as a restart can take on a loaded machine.
    db = AppDatabase(url=url, retry_delay_seconds=3.0, max_retries=20)
    outcome: dict[str, dg.ExecuteInProcessResult] = {}
    runner = threading.Thread(
        target=lambda: outcome.update(run=run_job(global_override_check_job, db, instance))
    )

    runner.start()

    def refused_once() -> bool:
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=global_override_check_job.name))
        return any(retries(instance, run.run_id) >= 1 for run in runs)

    wait_until(refused_once, 300, "the run's first refused connection and retry")
    start_again(own_postgres)
    finish(runner, 600)

    execution = outcome["run"]
    assert execution.success
    assert retries(instance, execution.run_id) >= 1
    assert job_result(execution)["action"] == "cleared"


def test_other_errors_fail_at_once_without_retrying(engine, app_db_url, instance):
    with engine.begin() as c:
        set_override(c, {"tier": "gold", "expires_at": "2020-01-01T00:00:00Z"})
    db = AppDatabase(url=app_db_url, retry_delay_seconds=5, max_retries=3)

    execution = run_job(global_override_check_job, db, instance)

    assert not execution.success
    assert retries(instance, execution.run_id) == 0


def test_every_update_failing_retries_the_run_then_fails_it(engine, app_db_url, instance):
    now = db_now(engine)
    with engine.begin() as c:
        c.execute(
            text(
                "CREATE FUNCTION reject() RETURNS trigger LANGUAGE plpgsql AS $$"
                " BEGIN RAISE EXCEPTION 'app rule: frozen'; END $$;"
                " CREATE TRIGGER reject BEFORE UPDATE ON users"
                " FOR EACH ROW EXECUTE FUNCTION reject();"
            )
        )
        add_expired_user(c, now)
    db = AppDatabase(url=app_db_url, retry_delay_seconds=0.1, max_retries=2)

    execution = run_job(tier_expiration_job, db, instance)

    assert not execution.success
    assert retries(instance, execution.run_id) == 2
    messages = log_messages(instance, execution)
    assert sum("Failed to downgrade user" in m for m in messages) == 3
