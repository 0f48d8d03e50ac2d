"""The jobs over many users while a second process plays the app, writing all along."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, text

from bench.generate import generate
from jobs_pipeline.definitions import defs
from jobs_pipeline.jobs.discipline_stats_rollup import ALL_SHARDS_TAGS
from jobs_pipeline.jobs.tier_expiration import tier_expiration_job
from jobs_pipeline.storage.app_tables import users
from jobs_pipeline_tests.support.deadlines import deadline, wait_until
from jobs_pipeline_tests.support.journal_data import expected_stats, stored_stats
from jobs_pipeline_tests.support.running import job_result, run_job

pytestmark = pytest.mark.slow

USERS = 20_000
FIGURES = Path(__file__).resolve().parents[2] / "build" / "reliability" / "live_app.json"


def test_the_jobs_hold_while_the_app_writes(engine, db, instance, app_db_url, tmp_path):
    generate(engine, USERS)
    with engine.begin() as c:  # a third of the users on a paid tier that has expired
        c.execute(
            text(
                "UPDATE users SET tier = 'premium', tier_source = 'purchase',"
                " tier_expires_at = now() - interval '1 day'"
                " WHERE get_byte(uuid_send(id), 0) % 3 = 0"
            )
        )
    stop, result, started = tmp_path / "stop", tmp_path / "app.json", tmp_path / "started"
    app = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs_pipeline_tests.support.app_simulator",
            app_db_url,
            str(stop),
            str(result),
            str(started),
        ]
    )
    try:
        wait_until(started.exists, 60, "the app began to write")
        downgrade = run_job(tier_expiration_job, db, instance, batch_size=500, allow_large=True)
        rollup = defs.resolve_job_def("discipline_stats_rollup").execute_in_process(
            resources={"db": db}, instance=instance, tags=ALL_SHARDS_TAGS, raise_on_error=False
        )
    finally:
        stop.touch()
        app.wait(timeout=deadline(60))
    played = json.loads(result.read_text())

    assert downgrade.success and rollup.success
    with engine.connect() as c:
        tiers = dict(c.execute(select(users.c.id, users.c.tier)).all())
    wrongly_downgraded = [u for u in played["renewed"] if tiers[_uuid(u)] != "premium"]
    assert played["renewed"] and wrongly_downgraded == []
    assert played["lock_timeouts"] == 0

    expected, stored = expected_stats(engine), stored_stats(engine)
    quiet = [u for u in expected.index if str(u) not in set(played["active"])]
    assert (stored.loc[quiet] == expected.loc[quiet]).all().all()
    active = [_uuid(u) for u in played["active"]]
    # The app only added shots to its active users: what the rollup saw lies between.
    assert (stored.loc[active, "total_shots"] <= expected.loc[active, "total_shots"]).all()

    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(
        json.dumps(
            {
                "users": USERS,
                "downgraded": job_result(downgrade)["processed"],
                "skipped_locked": job_result(downgrade)["skipped"],
                "renewed_during_the_run": len(played["renewed"]),
                "wrongly_downgraded": len(wrongly_downgraded),
                "app_transactions": played["transactions"],
                "app_lock_timeouts": played["lock_timeouts"],
                "slowest_app_transaction_s": round(played["slowest_transaction_s"], 3),
                "stats_rows_checked": len(expected),
            },
            indent=2,
        )
    )


def _uuid(value: str):
    import uuid

    return uuid.UUID(value)
