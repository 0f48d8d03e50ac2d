"""Dry runs at a chosen time: each time rule evaluated as if the run happened then.

Real runs on a real instance and a real database; the CLI as a real subprocess.
"""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from jobs_pipeline.formats import iso_utc
from jobs_pipeline.interfaces.launching.plans import LaunchError, op_config_for, plan_launch
from jobs_pipeline.jobs.email_delivery import email_delivery_job
from jobs_pipeline.jobs.global_override_check import global_override_check_job
from jobs_pipeline.jobs.promo_cleanup import promo_cleanup_job
from jobs_pipeline.jobs.tier_expiration import tier_expiration_job
from jobs_pipeline.jobs.trial_reminder import trial_reminder_job
from jobs_pipeline.resources.mail import Mailer
from jobs_pipeline.storage.app_tables import promo_codes, promo_redemptions
from jobs_pipeline.storage.project_tables import email_outbox
from jobs_pipeline_tests.support.app_data import (
    add_expired_user,
    add_promo_code,
    add_redemption,
    add_user,
    db_now,
    set_override,
    table_rows,
)
from jobs_pipeline_tests.support.processes import cli_environment, run_cli
from jobs_pipeline_tests.support.running import failure_message, job_result, result_of_run, run_job


def z(moment: datetime) -> str:
    """An instant as the jobs write it, whatever the session's time zone: `...Z`."""
    return iso_utc(moment.astimezone(UTC))


def next_sunday_2am(now: datetime) -> datetime:
    """promo-cleanup's next tick (Sundays 02:00 UTC), strictly after `now`."""
    utc = now.astimezone(UTC)
    days_ahead = (6 - utc.weekday()) % 7
    tick = (utc + timedelta(days=days_ahead)).replace(hour=2, minute=0, second=0, microsecond=0)
    return tick if tick > utc else tick + timedelta(days=7)


@pytest.fixture
def redemptions_around_sunday(engine):
    """Redemptions either side of 365 days before next Sunday 02:00, and codes either side
    of that tick: what a dry run as of the tick must tell apart.
    """
    now = db_now(engine)
    sunday = next_sunday_2am(now)
    halfway = (sunday - now) / 2
    with engine.begin() as c:
        user = add_user(c)
        code = add_promo_code(c, "BY_SUNDAY", valid_until=now + halfway)
        add_promo_code(c, "AFTER_SUNDAY", valid_until=sunday + timedelta(hours=1))
        add_redemption(c, code, user, now - timedelta(days=400))  # old already
        add_redemption(c, code, user, sunday - timedelta(days=365) - halfway)  # old by Sunday
        add_redemption(c, code, user, sunday - timedelta(days=365) + timedelta(hours=1))  # not
    return sunday


def test_a_dry_run_as_of_next_sunday_sees_what_will_be_old_by_then(
    engine, db, instance, redemptions_around_sunday
):
    sunday = redemptions_around_sunday
    before = table_rows(engine, promo_codes), table_rows(engine, promo_redemptions)

    today = job_result(run_job(promo_cleanup_job, db, instance, dry_run=True))
    at_sunday = job_result(run_job(promo_cleanup_job, db, instance, dry_run=True, as_of=z(sunday)))

    assert (today["wouldDeactivate"], today["wouldDelete"]) == (0, 1)
    assert (at_sunday["wouldDeactivate"], at_sunday["wouldDelete"]) == (1, 2)
    assert list(at_sunday)[:2] == ["dryRun", "asOf"]
    assert at_sunday["asOf"] == z(sunday) and at_sunday["asOf"].endswith(":00Z")
    assert (table_rows(engine, promo_codes), table_rows(engine, promo_redemptions)) == before


def test_an_offset_names_the_same_instant(engine, db, instance, redemptions_around_sunday):
    sunday = redemptions_around_sunday
    kolkata = timezone(timedelta(hours=5, minutes=30))
    los_angeles = timezone(timedelta(hours=-8))

    for as_of in (
        sunday.astimezone(kolkata).isoformat(),
        sunday.astimezone(los_angeles).isoformat(),
    ):
        result = job_result(run_job(promo_cleanup_job, db, instance, dry_run=True, as_of=as_of))
        assert (result["asOf"], result["wouldDelete"]) == (z(sunday), 2)


def test_a_real_run_with_as_of_fails_at_once_and_changes_nothing(
    engine, db, instance, redemptions_around_sunday
):
    before = table_rows(engine, promo_codes), table_rows(engine, promo_redemptions)

    execution = run_job(promo_cleanup_job, db, instance, as_of=z(redemptions_around_sunday))

    assert not execution.success
    assert failure_message(execution) == (
        "as_of applies only to dry runs (dry_run: true, or --dry-run): a real run always uses"
        " the database's clock"
    )
    assert (table_rows(engine, promo_codes), table_rows(engine, promo_redemptions)) == before


@pytest.mark.parametrize(
    ("as_of", "message"),
    [
        (
            "next sunday",
            "as_of 'next sunday' is not an ISO-8601 timestamp (e.g. 2026-12-06T02:00:00Z)",
        ),
        (
            "2026-12-06T02:00:00",
            "as_of '2026-12-06T02:00:00' has no UTC offset: add Z or +HH:MM"
            " (e.g. 2026-12-06T02:00:00Z)",
        ),
    ],
)
def test_a_bad_as_of_fails_the_run_at_once(engine, db, instance, as_of, message):
    with engine.begin() as c:
        add_expired_user(c, db_now(engine))

    execution = run_job(tier_expiration_job, db, instance, dry_run=True, as_of=as_of)

    assert not execution.success
    assert failure_message(execution) == message


def test_tier_expiration_as_of_tomorrow_sees_tiers_expiring_tonight(engine, db, instance):
    now = db_now(engine)
    with engine.begin() as c:
        add_expired_user(c, now)
        add_expired_user(c, now, tier_expires_at=now + timedelta(hours=20))
        add_expired_user(c, now, tier_expires_at=now + timedelta(days=3))
    tomorrow = now + timedelta(days=1)

    result = job_result(run_job(tier_expiration_job, db, instance, dry_run=True, as_of=z(tomorrow)))

    assert list(result)[:3] == ["dryRun", "asOf", "wouldProcess"]
    assert (result["asOf"], result["wouldProcess"]) == (z(tomorrow), 2)
    assert job_result(run_job(tier_expiration_job, db, instance, dry_run=True))["wouldProcess"] == 1


def test_global_override_check_as_of_after_the_override_expires(engine, db, instance):
    now = db_now(engine)
    expires = z(now + timedelta(days=2))
    with engine.begin() as c:
        set_override(c, {"tier": "pro", "expires_at": expires})

    today = job_result(run_job(global_override_check_job, db, instance, dry_run=True))
    later = z(now + timedelta(days=3))
    then = job_result(run_job(global_override_check_job, db, instance, dry_run=True, as_of=later))

    assert today["action"] == "active" and today["asOf"].endswith("Z")
    assert abs(datetime.fromisoformat(today["asOf"]) - now) < timedelta(minutes=5)
    assert then == {
        "dryRun": True,
        "asOf": later,
        "action": "wouldClear",
        "previousTier": "pro",
        "expiredAt": expires,
    }
    assert list(then)[:2] == ["dryRun", "asOf"]


def test_trial_reminder_as_of_sees_reminders_not_yet_due(engine, db, instance, tmp_path):
    now = db_now(engine)
    with engine.begin() as c:
        add_user(c, trial_ends_at=now + timedelta(days=5), tier="premium", tier_source="trial")
    mailer = Mailer(outbox_dir=str(tmp_path / "outbox"))

    def dry_run(**config):
        execution = trial_reminder_job.execute_in_process(
            run_config=op_config_for(trial_reminder_job, dry_run=True, **config),
            resources={"db": db, "mailer": mailer},
            instance=instance,
            raise_on_error=False,
        )
        return job_result(execution)

    today = dry_run()
    in_three_days = dry_run(as_of=z(now + timedelta(days=3)))
    last_day = dry_run(as_of=z(now + timedelta(days=4, hours=12)))

    assert (today["wouldQueue3d"], today["wouldQueue1d"]) == (0, 0)
    assert (in_three_days["wouldQueue3d"], in_three_days["wouldQueue1d"]) == (1, 0)
    assert (last_day["wouldQueue3d"], last_day["wouldQueue1d"]) == (0, 1)
    assert list(last_day)[:2] == ["dryRun", "asOf"]
    assert table_rows(engine, email_outbox) == []


def test_plan_launch_passes_as_of_into_the_op_config_and_refuses_what_cannot_apply():
    plan = plan_launch(promo_cleanup_job, dry_run=True, as_of="2026-12-06T02:00:00Z")
    assert plan.run_config == {
        "ops": {
            "clean_up_promo_codes": {"config": {"dry_run": True, "as_of": "2026-12-06T02:00:00Z"}}
        }
    }
    with pytest.raises(LaunchError, match="only to dry runs"):
        plan_launch(promo_cleanup_job, as_of="2026-12-06T02:00:00Z")
    with pytest.raises(LaunchError, match="not email-delivery"):
        plan_launch(email_delivery_job, dry_run=True, as_of="2026-12-06T02:00:00Z")
    with pytest.raises(LaunchError, match="not an ISO-8601 timestamp"):
        plan_launch(tier_expiration_job, dry_run=True, as_of="tomorrow")
    with pytest.raises(LaunchError, match="out of range"):
        plan_launch(tier_expiration_job, dry_run=True, as_of="9999-12-31T23:59:59-14:00")


def test_the_cli_takes_as_of_for_dry_runs_only(
    engine, app_db_url, tmp_path, redemptions_around_sunday
):
    sunday = z(redemptions_around_sunday)
    env = cli_environment(tmp_path / "state", DATABASE_URL=app_db_url)

    def run(*args: str):
        return run_cli("run", *args, env=env, cwd=tmp_path)

    dry = run("promo-cleanup", "--dry-run", "--as-of", sunday)
    assert dry.returncode == 0, dry.stderr[-3000:]
    result = result_of_run(dry, "promo-cleanup")
    assert (result["dryRun"], result["asOf"], result["wouldDelete"]) == (True, sunday, 2)

    real = run("promo-cleanup", "--as-of", sunday)
    assert real.returncode == 2 and "--as-of applies only to dry runs" in real.stderr
    wrong_job = run("email-delivery", "--dry-run", "--as-of", sunday)
    assert wrong_job.returncode == 2
    assert (
        "--as-of applies only to global-override-check, promo-cleanup, tier-expiration and"
        " trial-reminder, not email-delivery"
    ) in wrong_job.stderr
    bad = run("promo-cleanup", "--dry-run", "--as-of", "sunday")
    assert bad.returncode == 2 and "not an ISO-8601 timestamp" in bad.stderr
    for refused in (real, wrong_job, bad):
        assert "Traceback" not in refused.stderr and refused.stdout == ""
    assert len(table_rows(engine, promo_redemptions)) == 3
