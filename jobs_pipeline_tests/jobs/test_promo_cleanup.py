from datetime import timedelta

import pytest
from sqlalchemy import func, select

from jobs_pipeline.jobs.promo_cleanup import promo_cleanup_job
from jobs_pipeline.storage.app_tables import promo_codes, promo_redemptions
from jobs_pipeline_tests.support.app_data import (
    add_promo_code,
    add_redemption,
    add_user,
    db_now,
    table_rows,
)
from jobs_pipeline_tests.support.running import job_result, log_messages, run_job


def code_states(engine) -> dict[str, bool]:
    with engine.connect() as c:
        return dict(c.execute(select(promo_codes.c.code, promo_codes.c.is_active)).all())


def redemption_count(engine) -> int:
    with engine.connect() as c:
        return c.execute(select(func.count()).select_from(promo_redemptions)).scalar_one()


@pytest.fixture
def promo_data(engine):
    """Codes in every state, and redemptions either side of the 365-day retention."""
    now = db_now(engine)
    with engine.begin() as c:
        user = add_user(c)
        expired = add_promo_code(c, "EXPIRED", valid_until=now - timedelta(days=1))
        add_promo_code(c, "ALSO_EXPIRED", valid_until=now - timedelta(seconds=30))
        add_promo_code(c, "FOREVER", valid_until=None)
        add_promo_code(c, "FUTURE", valid_until=now + timedelta(days=10))
        add_promo_code(c, "RETIRED", valid_until=now - timedelta(days=50), is_active=False)
        old = [add_redemption(c, expired, user, now - timedelta(days=400 + i)) for i in range(7)]
        add_redemption(c, expired, user, now - timedelta(days=364))
        add_redemption(c, expired, user, now - timedelta(days=40))
    return {"now": now, "old": old, "user": user, "code": expired}


def test_deactivates_expired_codes_and_deletes_old_redemptions(engine, db, instance, promo_data):
    execution = run_job(promo_cleanup_job, db, instance)

    assert execution.success
    result = job_result(execution)
    assert (result["codesDeactivated"], result["redemptionsDeleted"]) == (2, 7)
    assert code_states(engine) == {
        "EXPIRED": False,
        "ALSO_EXPIRED": False,
        "FOREVER": True,
        "FUTURE": True,
        "RETIRED": False,
    }
    with engine.connect() as c:
        remaining = set(c.execute(select(promo_redemptions.c.id)).scalars())
    assert remaining.isdisjoint(promo_data["old"])
    assert len(remaining) == 2
    messages = log_messages(instance, execution)
    assert "[promo-cleanup] Deactivated 2 expired codes" in messages
    assert "[promo-cleanup] Deleted 7 old redemption records" in messages
    assert any(m.startswith("[promo-cleanup] Result: {") for m in messages)


def test_retention_is_configurable_and_batches_are_bounded(engine, db, instance, promo_data):
    execution = run_job(promo_cleanup_job, db, instance, redemption_retention_days=30, batch_size=3)

    assert job_result(execution)["redemptionsDeleted"] == 9
    assert redemption_count(engine) == 0


def test_a_retention_below_one_day_is_refused(engine, db, instance, promo_data):
    execution = run_job(promo_cleanup_job, db, instance, redemption_retention_days=0)

    assert not execution.success
    assert redemption_count(engine) == 9


def test_dry_run_reports_and_changes_nothing(engine, db, instance, promo_data):
    codes_before = table_rows(engine, promo_codes)
    redemptions_before = table_rows(engine, promo_redemptions)

    execution = run_job(promo_cleanup_job, db, instance, dry_run=True)

    assert job_result(execution)["wouldDeactivate"] == 2
    assert job_result(execution)["wouldDelete"] == 7
    assert table_rows(engine, promo_codes) == codes_before
    assert table_rows(engine, promo_redemptions) == redemptions_before
    messages = log_messages(instance, execution)
    assert any(m.startswith("[promo-cleanup] Would deactivate code EXPIRED") for m in messages)


def test_re_running_changes_nothing_more(engine, db, instance, promo_data):
    run_job(promo_cleanup_job, db, instance)
    codes, redemptions = table_rows(engine, promo_codes), table_rows(engine, promo_redemptions)

    again = run_job(promo_cleanup_job, db, instance)

    assert (job_result(again)["codesDeactivated"], job_result(again)["redemptionsDeleted"]) == (
        0,
        0,
    )
    assert table_rows(engine, promo_codes) == codes
    assert table_rows(engine, promo_redemptions) == redemptions


def test_rows_the_app_holds_locked_wait_for_the_next_run(engine, db, instance, promo_data):
    held = promo_data["old"][0]
    app = engine.connect()
    transaction = app.begin()
    app.execute(select(promo_redemptions).where(promo_redemptions.c.id == held).with_for_update())
    try:
        execution = run_job(promo_cleanup_job, db, instance, batch_size=2)
    finally:
        transaction.rollback()
        app.close()

    assert execution.success
    assert job_result(execution)["redemptionsDeleted"] == 6
    assert job_result(run_job(promo_cleanup_job, db, instance))["redemptionsDeleted"] == 1
