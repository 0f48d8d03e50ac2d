import json
import threading
from datetime import timedelta

import dagster as dg
from sqlalchemy import select, text, update

from jobs_pipeline.jobs.tier_expiration import tier_expiration_job
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.storage.app_tables import users
from jobs_pipeline_tests.support.app_data import (
    add_expired_user,
    add_user,
    db_now,
    table_rows,
    user_row,
)
from jobs_pipeline_tests.support.deadlines import deadline
from jobs_pipeline_tests.support.running import failure_message, job_result, log_messages, run_job

# How long the app holds a row while a run goes on beside it.
LOCK_HELD_S = 120


def test_downgrades_only_expired_paid_users(engine, db, instance):
    now = db_now(engine)
    with engine.begin() as c:
        expired_premium = add_expired_user(c, now, "premium", tier_source="promo")
        expired_pro = add_expired_user(c, now, "pro", tier_source="trial")
        renewed = add_user(c, tier="premium", tier_expires_at=now + timedelta(days=3))
        lifetime = add_user(c, tier="pro", tier_source="admin", tier_expires_at=None)
        free_with_old_date = add_user(c, tier="free", tier_expires_at=now - timedelta(days=1))
    untouched = {uid: user_row(engine, uid) for uid in (renewed, lifetime, free_with_old_date)}

    execution = run_job(tier_expiration_job, db, instance)

    assert execution.success
    result = job_result(execution)
    assert result is not None
    assert (result["processed"], result["failed"], result["skipped"]) == (2, 0, 0)
    for user_id in (expired_premium, expired_pro):
        row = user_row(engine, user_id)
        assert (row["tier"], row["tier_source"], row["tier_expires_at"]) == (
            "free",
            "default",
            None,
        )
        assert row["updated_at"] > now
    for user_id, before in untouched.items():
        assert user_row(engine, user_id) == before


def test_logs_in_the_seed_format_and_records_metadata(engine, db, instance):
    now = db_now(engine)
    with engine.begin() as c:
        user_id = add_expired_user(c, now, "pro")

    execution = run_job(tier_expiration_job, db, instance)

    messages = log_messages(instance, execution)
    assert "[tier-expiration] Found 1 users with expired tiers" in messages
    assert f"[tier-expiration] Downgraded user {user_id} from pro to free" in messages
    result_lines = [m for m in messages if m.startswith("[tier-expiration] Result: ")]
    assert len(result_lines) == 1
    logged = json.loads(result_lines[0].removeprefix("[tier-expiration] Result: "))
    assert logged == job_result(execution)
    (materialized,) = [
        e for e in execution.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT
    ]
    metadata = materialized.step_output_data.metadata
    assert metadata["processed"].value == 1
    assert metadata["failed"].value == 0


def test_many_users_in_batches_with_capped_log_lines(engine, db, instance):
    now = db_now(engine)
    with engine.begin() as c:
        ids = [add_expired_user(c, now) for _ in range(150)]

    # Every paying user expired: over the guard's cap, which test_guard covers.
    execution = run_job(tier_expiration_job, db, instance, batch_size=40, allow_large=True)

    assert job_result(execution)["processed"] == 150
    with engine.connect() as c:
        tiers = set(c.execute(select(users.c.tier).where(users.c.id.in_(ids))).scalars())
    assert tiers == {"free"}
    messages = log_messages(instance, execution)
    assert sum("Downgraded user" in m for m in messages) == 100
    assert "[tier-expiration] ... and 50 more users downgraded (per-row lines stop at 100)" in (
        messages
    )


def test_dry_run_reports_and_changes_nothing(engine, db, instance):
    now = db_now(engine)
    with engine.begin() as c:
        ids = [add_expired_user(c, now) for _ in range(3)]
        add_user(c, tier="premium", tier_expires_at=now + timedelta(days=1))
    before = table_rows(engine, users)

    execution = run_job(tier_expiration_job, db, instance, dry_run=True)

    assert execution.success
    assert table_rows(engine, users) == before
    result = job_result(execution)
    assert result["dryRun"] is True and result["wouldProcess"] == 3
    messages = log_messages(instance, execution)
    for user_id in ids:
        assert f"[tier-expiration] Would downgrade user {user_id} from premium to free" in messages


def test_re_running_changes_nothing_more(engine, db, instance):
    now = db_now(engine)
    with engine.begin() as c:
        for _ in range(5):
            add_expired_user(c, now)
    assert job_result(run_job(tier_expiration_job, db, instance))["processed"] == 5
    after_first = table_rows(engine, users)

    second = run_job(tier_expiration_job, db, instance)

    assert second.success
    assert job_result(second)["processed"] == 0
    assert table_rows(engine, users) == after_first


def test_a_row_the_app_holds_locked_is_skipped_then_taken_by_the_next_run(engine, db, instance):
    now = db_now(engine)
    with engine.begin() as c:
        held = add_expired_user(c, now)
        free_to_go = add_expired_user(c, now)
    # A lock timeout longer than the test waits: a run that waited on the app's row would
    # still be waiting when the test gives up, so finishing at all shows it skipped the row.
    patient = AppDatabase(
        url=db.url,
        retry_delay_seconds=db.retry_delay_seconds,
        max_retries=db.max_retries,
        lock_timeout_ms=int(deadline(LOCK_HELD_S * 2) * 1000),
    )
    finished: list[dg.ExecuteInProcessResult] = []

    app = engine.connect()
    transaction = app.begin()
    app.execute(select(users.c.id).where(users.c.id == held).with_for_update())
    try:
        running = threading.Thread(
            target=lambda: finished.append(run_job(tier_expiration_job, patient, instance))
        )
        running.start()
        running.join(timeout=deadline(LOCK_HELD_S))
        finished_while_held = not running.is_alive()
    finally:
        transaction.rollback()
        app.close()
        running.join()

    assert finished_while_held, "the run waited on the row the app held locked"
    (execution,) = finished
    assert execution.success
    result = job_result(execution)
    assert (result["processed"], result["skipped"]) == (1, 1)
    assert user_row(engine, held)["tier"] == "premium"
    assert user_row(engine, free_to_go)["tier"] == "free"
    assert any(
        "Skipped 1 users whose rows the app held locked" in m
        for m in log_messages(instance, execution)
    )

    next_run = run_job(tier_expiration_job, db, instance)
    assert job_result(next_run)["processed"] == 1
    assert user_row(engine, held)["tier"] == "free"


def test_a_renewal_in_flight_is_not_downgraded(engine, db, instance):
    now = db_now(engine)
    with engine.begin() as c:
        renewing = add_expired_user(c, now)
    renewed_until = now + timedelta(days=30)

    app = engine.connect()
    transaction = app.begin()
    app.execute(update(users).where(users.c.id == renewing).values(tier_expires_at=renewed_until))
    execution = run_job(tier_expiration_job, db, instance)
    transaction.commit()
    app.close()

    assert execution.success
    row = user_row(engine, renewing)
    assert (row["tier"], row["tier_expires_at"]) == ("premium", renewed_until)
    assert job_result(run_job(tier_expiration_job, db, instance))["processed"] == 0


def test_renewals_racing_the_job_are_never_downgraded(engine, db, instance):
    now = db_now(engine)
    with engine.begin() as c:
        ids = [add_expired_user(c, now) for _ in range(1500)]
    renewed: list = []
    stop = threading.Event()

    def app_renews_users() -> None:
        with engine.connect() as app:
            for user_id in reversed(ids):
                if stop.is_set():
                    return
                with app.begin():
                    app.execute(
                        update(users)
                        .where(users.c.id == user_id)
                        .values(tier="pro", tier_expires_at=now + timedelta(days=30))
                    )
                renewed.append(user_id)

    app = threading.Thread(target=app_renews_users)
    app.start()
    execution = run_job(tier_expiration_job, db, instance, batch_size=25, allow_large=True)
    stop.set()
    app.join()

    assert execution.success
    assert renewed, "the app renewed no one while the job ran"
    with engine.connect() as c:
        rows = c.execute(select(users.c.id, users.c.tier).where(users.c.id.in_(renewed))).all()
    wrongly_downgraded = [user_id for user_id, tier in rows if tier != "pro"]
    assert wrongly_downgraded == []
    result = job_result(execution)
    assert result["processed"] + len(renewed) >= len(ids) - result["skipped"]


REJECT_BROKEN_USER = """
CREATE FUNCTION reject_broken() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.email LIKE 'broken%' THEN RAISE EXCEPTION 'app rule: % may not change', NEW.email; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER reject_broken BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION reject_broken();
"""


def test_one_users_failure_is_logged_and_the_rest_go_on(engine, db, instance):
    now = db_now(engine)
    with engine.begin() as c:
        c.execute(text(REJECT_BROKEN_USER))
        good = [add_expired_user(c, now) for _ in range(4)]
        broken = add_expired_user(c, now, email="broken@example.com")

    execution = run_job(tier_expiration_job, db, instance)

    assert execution.success
    result = job_result(execution)
    assert (result["processed"], result["failed"], result["skipped"]) == (4, 1, 0)
    assert {user_row(engine, u)["tier"] for u in good} == {"free"}
    assert user_row(engine, broken)["tier"] == "premium"
    assert any(
        m.startswith(f"[tier-expiration] Failed to downgrade user {broken}: app rule")
        for m in log_messages(instance, execution)
    )


def test_the_run_fails_when_every_update_failed(engine, db, instance):
    now = db_now(engine)
    with engine.begin() as c:
        c.execute(text(REJECT_BROKEN_USER))
        ids = [add_expired_user(c, now, email=f"broken{i}@example.com") for i in range(3)]

    execution = run_job(tier_expiration_job, db, instance)

    assert not execution.success
    message = failure_message(execution)
    assert "All 3 user updates failed" in message
    assert "app rule" in message
    assert {user_row(engine, u)["tier"] for u in ids} == {"premium"}
