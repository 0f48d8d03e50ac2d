"""The blast-radius guard stops a run that would change too much, before it writes."""

import subprocess
from datetime import timedelta

from jobs_pipeline.jobs.promo_cleanup import promo_cleanup_job
from jobs_pipeline.jobs.tier_expiration import tier_expiration_job
from jobs_pipeline.storage.app_tables import promo_redemptions, users
from jobs_pipeline.storage.project_tables import change_ledger, email_outbox
from jobs_pipeline.tags import GUARD_REFUSED_TAG
from jobs_pipeline_tests.support.app_data import (
    add_expired_user,
    add_promo_code,
    add_redemption,
    add_user,
    db_now,
    table_rows,
)
from jobs_pipeline_tests.support.processes import JOBS_PIPELINE, cli_environment
from jobs_pipeline_tests.support.running import failure_message, job_result, run_job


def nine_in_ten_paying_users_expired(engine) -> None:
    """What a clock set a year ahead would see: 90% of paying users expired."""
    now = db_now(engine)
    with engine.begin() as c:
        for _ in range(180):
            add_expired_user(c, now)
        for _ in range(20):
            add_user(c, tier="pro", tier_source="purchase", tier_expires_at=now + timedelta(days=9))


def test_a_run_that_would_downgrade_90_percent_stops_and_writes_nothing(engine, db, instance):
    nine_in_ten_paying_users_expired(engine)
    before = table_rows(engine, users)

    execution = run_job(tier_expiration_job, db, instance)

    assert not execution.success
    assert failure_message(execution) == (
        "Refusing to downgrade paying users: this run would change 180 rows, 90% of the 200"
        " paying users, over the cap of at most 20% of the paying users (max_downgrade_share),"
        " once a run would change over 100 rows. The other cap: at most 10000 rows"
        " (max_downgrades). Nothing was changed. Check the data and the clock; if it is right,"
        " run it again allowing it: jobs-pipeline run tier-expiration --allow-large (or"
        " allow_large: true in the Launchpad or the admin API's body)."
    )
    assert table_rows(engine, users) == before
    assert table_rows(engine, change_ledger) == [] and table_rows(engine, email_outbox) == []
    # Tagged, so the refusals can be counted (the metric jobs_pipeline_guard_refusals_total).
    assert instance.get_run_by_id(execution.run_id).tags[GUARD_REFUSED_TAG] == "true"


def test_after_looking_an_operator_can_allow_it(engine, db, instance):
    nine_in_ten_paying_users_expired(engine)

    execution = run_job(tier_expiration_job, db, instance, allow_large=True)

    assert execution.success and job_result(execution)["processed"] == 180
    assert GUARD_REFUSED_TAG not in instance.get_run_by_id(execution.run_id).tags


def test_the_absolute_cap_applies_too(engine, db, instance):
    now = db_now(engine)
    with engine.begin() as c:
        for _ in range(30):
            add_expired_user(c, now)
        for _ in range(300):
            add_user(c, tier="pro", tier_source="purchase", tier_expires_at=now + timedelta(days=9))

    execution = run_job(tier_expiration_job, db, instance, max_downgrades=25)

    assert not execution.success
    assert (
        "this run would change 30 rows, 9% of the 330 paying users, over the cap of at most"
        " 25 rows (max_downgrades). The other cap: at most 20% of the paying users"
    ) in failure_message(execution)


def test_promo_cleanup_refuses_to_delete_most_redemptions(engine, db, instance):
    now = db_now(engine)
    with engine.begin() as c:
        user = add_user(c)
        code = add_promo_code(c, "BULK")
        for n in range(1_200):
            add_redemption(c, code, user, now - timedelta(days=400 + n % 30))
        add_redemption(c, code, user, now - timedelta(days=3))
    before = table_rows(engine, promo_redemptions)

    refused = run_job(promo_cleanup_job, db, instance)
    assert not refused.success
    assert failure_message(refused).startswith(
        "Refusing to delete promo redemptions: this run would change 1200 rows, 100% of the"
        " 1201 redemptions, over the cap of at most 50% of the redemptions (max_share), once a"
        " run would change over 1000 rows. The other cap: at most 1000000 rows (fixed)."
    )
    assert "jobs-pipeline run promo-cleanup --allow-large" in failure_message(refused)
    assert table_rows(engine, promo_redemptions) == before
    assert instance.get_run_by_id(refused.run_id).tags[GUARD_REFUSED_TAG] == "true"

    allowed = run_job(promo_cleanup_job, db, instance, allow_large=True)
    assert job_result(allowed)["redemptionsDeleted"] == 1_200


def test_the_cli_takes_allow_large(engine, app_db_url, tmp_path):
    nine_in_ten_paying_users_expired(engine)
    env = cli_environment(tmp_path / "state", DATABASE_URL=app_db_url)

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(JOBS_PIPELINE), "run", "tier-expiration", *extra],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    refused = run()
    assert refused.returncode == 1 and "Refusing to downgrade paying users" in refused.stderr
    allowed = run("--allow-large")
    assert allowed.returncode == 0, allowed.stderr
    assert '"processed": 180' in allowed.stdout.splitlines()[-1]
    wrong_job = subprocess.run(
        [str(JOBS_PIPELINE), "run", "global-override-check", "--allow-large"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert wrong_job.returncode == 2 and "--allow-large" in wrong_job.stderr
