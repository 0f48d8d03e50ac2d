"""The change ledger holds exactly what each run changed, compared with the tables."""

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from jobs_pipeline.definitions import defs
from jobs_pipeline.jobs.discipline_stats_rollup import ALL_SHARDS_TAGS
from jobs_pipeline.jobs.global_override_check import global_override_check_job
from jobs_pipeline.jobs.history_retention import history_retention_job
from jobs_pipeline.jobs.promo_cleanup import promo_cleanup_job
from jobs_pipeline.jobs.tier_expiration import tier_expiration_job
from jobs_pipeline.storage.app_tables import promo_redemptions, users
from jobs_pipeline.storage.project_tables import change_ledger
from jobs_pipeline_tests.support.app_data import (
    add_expired_user,
    add_promo_code,
    add_redemption,
    add_user,
    db_now,
    set_override,
    table_rows,
)
from jobs_pipeline_tests.support.journal_data import make_journals
from jobs_pipeline_tests.support.running import job_result, run_job


def ledger_rows(engine, run_id: str) -> list[dict[str, Any]]:
    with engine.connect() as c:
        rows = c.execute(select(change_ledger).where(change_ledger.c.run_id == run_id)).all()
    return [dict(row._mapping) for row in rows]


def timed(values: dict[str, Any]) -> dict[str, Any]:
    """A ledger entry with its timestamps read back as datetimes."""
    return {
        key: datetime.fromisoformat(value) if key.endswith("_at") and value else value
        for key, value in values.items()
    }


def test_each_downgrade_is_recorded_with_its_values_before_and_after(engine, db, instance):
    now = db_now(engine)
    with engine.begin() as c:
        for tier in ("premium", "pro", "premium"):
            add_expired_user(c, now, tier, tier_source="promo")
        add_user(c, tier="pro", tier_expires_at=now + timedelta(days=1))
    before = {row["id"]: row for row in table_rows(engine, users)}

    execution = run_job(tier_expiration_job, db, instance)

    after = {row["id"]: row for row in table_rows(engine, users)}
    changed = {key for key in before if before[key] != after[key]}
    entries = ledger_rows(engine, execution.run_id)
    assert {entry["row_key"] for entry in entries} == {str(key) for key in changed}
    assert len(entries) == len(changed) == 3
    columns = ("tier", "tier_source", "tier_expires_at", "updated_at")
    for entry in entries:
        key = next(k for k in changed if str(k) == entry["row_key"])
        assert (entry["job"], entry["table_name"]) == ("tier_expiration", "users")
        old = {c: before[key][c] for c in columns}
        new = {c: after[key][c] for c in columns}
        assert timed(entry["before"]) == old
        assert timed(entry["after"]) == new
        assert entry["reason"].startswith("tier_expires_at ")
        assert " < run time " in entry["reason"]


def test_deleted_redemptions_keep_their_whole_row_and_codes_their_flag(engine, db, instance):
    now = db_now(engine)
    with engine.begin() as c:
        user = add_user(c)
        code = add_promo_code(c, "OLD", valid_until=now - timedelta(days=1))
        add_redemption(c, code, user, now - timedelta(days=10))
        old = add_redemption(c, code, user, now - timedelta(days=400))
    deleted_row = next(r for r in table_rows(engine, promo_redemptions) if r["id"] == old)

    execution = run_job(promo_cleanup_job, db, instance)

    entries = {entry["table_name"]: entry for entry in ledger_rows(engine, execution.run_id)}
    assert set(entries) == {"promo_codes", "promo_redemptions"}
    assert entries["promo_codes"]["row_key"] == str(code)
    assert (entries["promo_codes"]["before"], entries["promo_codes"]["after"]) == (
        {"is_active": True},
        {"is_active": False},
    )
    redemption = entries["promo_redemptions"]
    assert redemption["after"] is None
    assert timed(redemption["before"]) == {
        "id": str(old),
        "promo_code_id": str(code),
        "user_id": str(user),
        "redeemed_at": deleted_row["redeemed_at"],
    }


def test_a_cleared_override_is_kept_in_the_ledger(engine, db, instance):
    value = {"tier": "pro", "expires_at": "2020-01-01T00:00:00Z"}
    with engine.begin() as c:
        set_override(c, value)

    execution = run_job(global_override_check_job, db, instance)

    (entry,) = ledger_rows(engine, execution.run_id)
    assert (entry["table_name"], entry["row_key"]) == ("global_config", "global_tier_override")
    assert entry["before"]["value"] == value and entry["after"] is None
    assert entry["reason"].startswith("expires_at 2020-01-01T00:00:00Z < run time ")


def test_dry_runs_and_the_rollup_record_nothing(engine, db, instance):
    now = db_now(engine)
    with engine.begin() as c:
        add_expired_user(c, now)
    make_journals(engine, seed=3, user_count=10)
    dry = run_job(tier_expiration_job, db, instance, dry_run=True)
    rollup = defs.resolve_job_def("discipline_stats_rollup").execute_in_process(
        resources={"db": db}, instance=instance, tags=ALL_SHARDS_TAGS
    )
    assert rollup.success
    assert ledger_rows(engine, dry.run_id) == [] and ledger_rows(engine, rollup.run_id) == []


def test_the_ledger_keeps_its_rows_for_its_retention_then_history_retention_removes_them(
    engine, db, instance
):
    from sqlalchemy import update

    with engine.begin() as c:
        set_override(c, {"tier": "pro", "expires_at": "2020-01-01T00:00:00Z"})
    cleared = run_job(global_override_check_job, db, instance)
    with engine.begin() as c:
        c.execute(
            update(change_ledger)
            .where(change_ledger.c.run_id == cleared.run_id)
            .values(changed_at=change_ledger.c.changed_at - timedelta(days=60))
        )
    run_job(history_retention_job, db, instance)  # 90 days by default: kept
    assert len(ledger_rows(engine, cleared.run_id)) == 1
    dry = run_job(history_retention_job, db, instance, dry_run=True, ledger_retention_days=45)
    assert job_result(dry)["wouldDeleteLedgerRows"] == 1
    assert len(ledger_rows(engine, cleared.run_id)) == 1  # a dry run deletes nothing

    deleted = run_job(history_retention_job, db, instance, ledger_retention_days=45)

    assert job_result(deleted)["ledgerRowsDeleted"] == 1
    assert ledger_rows(engine, cleared.run_id) == []
    again = run_job(history_retention_job, db, instance, ledger_retention_days=45)
    assert job_result(again)["ledgerRowsDeleted"] == 0
    refused = run_job(history_retention_job, db, instance, ledger_retention_days=10)
    assert not refused.success  # shorter than the 30-day undo window
