import os
import time
from datetime import UTC, timedelta, timezone

import pytest
from sqlalchemy import select, update

from jobs_pipeline.jobs.global_override_check import (
    OVERRIDE_KEY,
    delete_if_unchanged,
    global_override_check_job,
    read_override,
)
from jobs_pipeline.storage.app_tables import global_config
from jobs_pipeline.storage.ledger import RunIdentity
from jobs_pipeline_tests.support.app_data import db_now, set_override, table_rows
from jobs_pipeline_tests.support.running import failure_message, job_result, log_messages, run_job

A_RUN = RunIdentity(run_id="a-run", job="global_override_check")


def iso_z(moment) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_no_override(db, instance):
    execution = run_job(global_override_check_job, db, instance)

    assert job_result(execution) == {"action": "none"}
    assert "[global-override-check] No override configured" in log_messages(instance, execution)


def test_an_active_override_stays(engine, db, instance):
    expires = iso_z(db_now(engine) + timedelta(days=2))
    with engine.begin() as c:
        set_override(c, {"tier": "pro", "expires_at": expires})

    execution = run_job(global_override_check_job, db, instance)

    assert job_result(execution) == {"action": "active", "tier": "pro", "expiresAt": expires}
    assert len(table_rows(engine, global_config)) == 1


def test_an_expired_override_is_cleared(engine, db, instance):
    expired = iso_z(db_now(engine) - timedelta(minutes=5))
    with engine.begin() as c:
        set_override(c, {"tier": "premium", "expires_at": expired})

    execution = run_job(global_override_check_job, db, instance)

    assert job_result(execution) == {
        "action": "cleared",
        "previousTier": "premium",
        "expiredAt": expired,
    }
    assert table_rows(engine, global_config) == []
    assert "[global-override-check] Cleared expired override (was: premium)" in log_messages(
        instance, execution
    )
    assert job_result(run_job(global_override_check_job, db, instance)) == {"action": "none"}


def test_an_offset_is_honoured(engine, db, instance):
    # An hour ago, written at +05:00: its wall-clock digits are 4 hours ahead of UTC.
    moment = (db_now(engine) - timedelta(hours=1)).astimezone(timezone(timedelta(hours=5)))
    written = moment.isoformat()
    with engine.begin() as c:
        set_override(c, {"tier": "pro", "expires_at": written})

    execution = run_job(global_override_check_job, db, instance)

    assert job_result(execution)["action"] == "cleared"


def test_a_time_without_offset_is_read_as_utc(engine, db, instance, monkeypatch):
    # In a zone at +14:00, a misreading as local time would put this in the past.
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    try:
        in_an_hour = (db_now(engine) + timedelta(hours=1)).astimezone(UTC).replace(tzinfo=None)
        written = in_an_hour.isoformat(timespec="seconds")
        with engine.begin() as c:
            set_override(c, {"tier": "premium", "expires_at": written})

        execution = run_job(global_override_check_job, db, instance)
    finally:
        monkeypatch.undo()
        time.tzset()

    assert job_result(execution) == {"action": "active", "tier": "premium", "expiresAt": written}
    assert os.environ.get("TZ") != "Pacific/Kiritimati"


def test_dry_run_reports_and_keeps_an_expired_override(engine, db, instance):
    expired = iso_z(db_now(engine) - timedelta(days=1))
    with engine.begin() as c:
        set_override(c, {"tier": "pro", "expires_at": expired})
    before = table_rows(engine, global_config)

    execution = run_job(global_override_check_job, db, instance, dry_run=True)

    result = job_result(execution)
    assert result.pop("asOf").endswith("Z")  # the time the rule used: the database's clock
    assert result == {
        "action": "wouldClear",
        "dryRun": True,
        "previousTier": "pro",
        "expiredAt": expired,
    }
    assert table_rows(engine, global_config) == before


def test_the_delete_removes_only_the_value_that_was_read(engine):
    with engine.begin() as c:
        set_override(c, {"tier": "pro", "expires_at": "2020-01-01T00:00:00Z"})
    with engine.begin() as c:
        _, value_read = read_override(c)
    newer = {"tier": "premium", "expires_at": "2099-01-01T00:00:00Z"}
    with engine.begin() as admin:
        admin.execute(
            update(global_config).where(global_config.c.key == OVERRIDE_KEY).values(value=newer)
        )

    with engine.begin() as c:
        deleted = delete_if_unchanged(c, value_read, A_RUN, "test")

    assert deleted is False
    with engine.connect() as c:
        kept = c.execute(select(global_config.c.value)).scalar_one()
    assert kept == newer
    with engine.begin() as c:
        assert delete_if_unchanged(c, newer, A_RUN, "test") is True


MALFORMED = [
    pytest.param("2020-01-01T00:00:00Z", "not a JSON object", id="a-string"),
    pytest.param(["pro", "2020-01-01"], "not a JSON object", id="a-list"),
    pytest.param(42, "not a JSON object", id="a-number"),
    pytest.param(None, "not a JSON object", id="json-null"),
    pytest.param({"expires_at": "2020-01-01T00:00:00Z"}, "'tier' is missing", id="no-tier"),
    pytest.param({"tier": "gold", "expires_at": "2020-01-01"}, "'tier' is 'gold'", id="bad-tier"),
    pytest.param({"tier": 2, "expires_at": "2020-01-01"}, "'tier' is 2", id="tier-number"),
    pytest.param({"tier": "pro"}, "'expires_at' is missing", id="no-expiry"),
    pytest.param({"tier": "pro", "expires_at": "soon"}, "not an ISO-8601 timestamp", id="text"),
    pytest.param({"tier": "pro", "expires_at": ""}, "not an ISO-8601 timestamp", id="empty"),
    pytest.param({"tier": "pro", "expires_at": 1767225600}, "not an ISO-8601 string", id="epoch"),
    pytest.param(
        {"tier": "pro", "expires_at": "2026-02-30T00:00:00Z"}, "not an ISO-8601", id="feb-30"
    ),
    pytest.param({"tier": "x" * 100_000, "expires_at": "2020-01-01"}, "characters", id="huge"),
]


@pytest.mark.parametrize(("value", "fault"), MALFORMED)
def test_a_malformed_override_fails_the_run_and_stays(engine, db, instance, value, fault):
    with engine.begin() as c:
        set_override(c, value)
    before = table_rows(engine, global_config)

    execution = run_job(global_override_check_job, db, instance)

    assert not execution.success
    message = failure_message(execution)
    assert message.startswith("global_config key 'global_tier_override' is malformed: ")
    assert fault in message
    assert len(message) < 400
    assert table_rows(engine, global_config) == before
