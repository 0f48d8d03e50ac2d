"""Faults survived with nothing lost: outages, kills, concurrent runs, users deleted midway."""

import json
import threading
from datetime import timedelta

import dagster as dg
from sqlalchemy import delete, func, select, text

from jobs_pipeline.definitions import defs
from jobs_pipeline.jobs.discipline_stats_rollup import ALL_SHARDS_TAGS
from jobs_pipeline.jobs.promo_cleanup import promo_cleanup_job
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.storage.app_tables import aims, promo_redemptions, shots, targets, users
from jobs_pipeline.storage.engine import create_app_engine
from jobs_pipeline.storage.project_tables import change_ledger, email_outbox
from jobs_pipeline_tests.support.app_data import (
    add_expired_user,
    add_promo_code,
    add_redemption,
    add_user,
    db_now,
    rows_past_slow_trigger,
    slow_trigger,
)
from jobs_pipeline_tests.support.deadlines import deadline, finish, wait_until
from jobs_pipeline_tests.support.journal_data import (
    as_records,
    expected_stats,
    make_journals,
    stored_stats,
)
from jobs_pipeline_tests.support.outages import start_again, stop
from jobs_pipeline_tests.support.processes import kill, start_job_process
from jobs_pipeline_tests.support.running import job_result, run_job

rollup_job = defs.resolve_job_def("discipline_stats_rollup")
# Rows a slow statement has passed before the test strikes: under way, far from done.
PARTWAY = 20


def count(engine, table, *where) -> int:
    with engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def wait_for(condition, deadline_s: float = 60) -> None:
    wait_until(condition, deadline_s, "the run got under way", interval=0.05)


def in_background(target) -> tuple[threading.Thread, dict]:
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(run=target()))
    thread.start()
    return thread, outcome


def test_two_runs_at_once_downgrade_each_user_exactly_once(engine, app_db_url):
    now = db_now(engine)
    with engine.begin() as c:
        for _ in range(400):
            add_expired_user(c, now)

    # Two processes, each straight through Dagster's Python API: past the queue.
    runs = [
        start_job_process(app_db_url, "tier_expiration", batch_size=7, allow_large=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=deadline(120))[0] for run in runs]

    assert [run.returncode for run in runs] == [0, 0]
    processed = [json.loads(out.strip().splitlines()[-1])["processed"] for out in outputs]
    assert sum(processed) == 400
    assert count(engine, users, users.c.tier == "free") == 400
    with engine.connect() as c:
        keys = list(c.execute(select(change_ledger.c.row_key)).scalars())
        outbox = list(c.execute(select(email_outbox.c.user_id)).scalars())
    assert len(keys) == len(set(keys)) == 400
    assert len(outbox) == len(set(outbox)) == 400


def test_a_database_stopped_mid_rollup_retries_and_writes_every_row_once(own_postgres, instance):
    url = own_postgres.url("app")
    engine = create_app_engine(url)
    make_journals(engine, seed=31, user_count=150)
    with engine.begin() as c:
        c.execute(text(slow_trigger("user_discipline_stats", "BEFORE INSERT", 0.01)))
    db = AppDatabase(url=url, retry_delay_seconds=1.5, max_retries=3)
    thread, outcome = in_background(
        lambda: rollup_job.execute_in_process(
            resources={"db": db}, instance=instance, tags=ALL_SHARDS_TAGS, raise_on_error=False
        )
    )
    # Inside the one statement, which writes a row every 10 ms.
    wait_for(lambda: rows_past_slow_trigger(engine, "user_discipline_stats") >= PARTWAY)
    engine.dispose()
    stop(own_postgres)
    restarted = start_again(own_postgres)
    finish(thread, 600)

    assert outcome["run"].success
    retried = instance.all_logs(
        outcome["run"].run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY
    )
    assert len(retried) >= 1
    engine = create_app_engine(restarted.url("app"))
    try:
        assert as_records(stored_stats(engine)) == as_records(expected_stats(engine))
    finally:
        engine.dispose()


def test_a_database_stopped_mid_cleanup_deletes_only_what_should_go_once(own_postgres, instance):
    url = own_postgres.url("app")
    engine = create_app_engine(url)
    now = db_now(engine)
    with engine.begin() as c:
        user = add_user(c)
        code = add_promo_code(c, "C")
        old = [add_redemption(c, code, user, now - timedelta(days=400 + n)) for n in range(40)]
        young = [add_redemption(c, code, user, now - timedelta(days=n)) for n in range(10)]
        c.execute(text(slow_trigger("promo_redemptions", "BEFORE DELETE", 0.05)))
    db = AppDatabase(url=url, retry_delay_seconds=1.5, max_retries=3)
    thread, outcome = in_background(
        lambda: run_job(promo_cleanup_job, db, instance, batch_size=4, allow_large=True)
    )
    wait_for(lambda: count(engine, promo_redemptions) < 46)
    engine.dispose()
    stop(own_postgres)
    restarted = start_again(own_postgres)
    finish(thread, 600)

    assert outcome["run"].success
    engine = create_app_engine(restarted.url("app"))
    try:
        with engine.connect() as c:
            left = set(c.execute(select(promo_redemptions.c.id)).scalars())
            recorded = list(
                c.execute(
                    select(change_ledger.c.row_key).where(
                        change_ledger.c.table_name == "promo_redemptions"
                    )
                ).scalars()
            )
        assert left == set(young)
        assert sorted(recorded) == sorted(str(r) for r in old)  # each deletion recorded once
    finally:
        engine.dispose()


def test_a_rollup_killed_midway_leaves_the_old_rows_whole(engine, db, app_db_url, instance):
    make_journals(engine, seed=33, user_count=120)
    assert rollup_job.execute_in_process(
        resources={"db": db}, instance=instance, tags=ALL_SHARDS_TAGS
    ).success
    with engine.begin() as c:  # the journal moves on; then a slow rollup is killed
        c.execute(text("UPDATE shots SET stop_loss_honored = NOT stop_loss_honored"))
        c.execute(text(slow_trigger("user_discipline_stats", "BEFORE UPDATE", 0.02)))
    before = as_records(stored_stats(engine))

    process = start_job_process(app_db_url, "discipline_stats_rollup")
    wait_for(lambda: rows_past_slow_trigger(engine, "user_discipline_stats") >= PARTWAY)
    kill(process, engine)

    assert as_records(stored_stats(engine)) == before  # all old: nothing half-written
    with engine.begin() as c:
        c.execute(text("DROP TRIGGER slow_user_discipline_stats ON user_discipline_stats"))
    assert rollup_job.execute_in_process(
        resources={"db": db}, instance=instance, tags=ALL_SHARDS_TAGS
    ).success
    assert as_records(stored_stats(engine)) == as_records(expected_stats(engine))


def test_a_cleanup_killed_midway_keeps_each_row_old_or_new_with_its_record(
    engine, db, app_db_url, instance
):
    now = db_now(engine)
    with engine.begin() as c:
        user = add_user(c)
        code = add_promo_code(c, "K")
        for n in range(40):
            add_redemption(c, code, user, now - timedelta(days=400 + n))
        c.execute(text(slow_trigger("promo_redemptions", "BEFORE DELETE", 0.05)))

    process = start_job_process(app_db_url, "promo_cleanup", batch_size=3, allow_large=True)
    wait_for(lambda: count(engine, promo_redemptions) < 40)
    kill(process, engine)

    left = count(engine, promo_redemptions)
    recorded = count(engine, change_ledger, change_ledger.c.table_name == "promo_redemptions")
    assert 0 < left < 40 and left + recorded == 40
    assert (
        job_result(run_job(promo_cleanup_job, db, instance, allow_large=True))["redemptionsDeleted"]
        == left
    )
    assert count(engine, promo_redemptions) == 0


def test_users_deleted_during_a_rollup_do_not_break_it(engine, db, instance):
    user_ids = make_journals(engine, seed=35, user_count=200)
    with engine.begin() as c:
        c.execute(text(slow_trigger("user_discipline_stats", "BEFORE INSERT", 0.01)))
    thread, outcome = in_background(
        lambda: rollup_job.execute_in_process(
            resources={"db": db}, instance=instance, tags=ALL_SHARDS_TAGS, raise_on_error=False
        )
    )
    wait_for(lambda: rows_past_slow_trigger(engine, "user_discipline_stats") >= PARTWAY)
    leaving = user_ids[-40:]
    with engine.begin() as app:  # the app deletes users, their journal first
        target_ids = select(targets.c.id).where(targets.c.user_id.in_(leaving))
        aim_ids = select(aims.c.id).where(aims.c.target_id.in_(target_ids))
        app.execute(delete(shots).where(shots.c.aim_id.in_(aim_ids)))
        app.execute(delete(aims).where(aims.c.target_id.in_(target_ids)))
        app.execute(delete(targets).where(targets.c.user_id.in_(leaving)))
        app.execute(delete(users).where(users.c.id.in_(leaving)))
    finish(thread, 600)

    assert outcome["run"].success
    assert as_records(stored_stats(engine)) == as_records(expected_stats(engine))
