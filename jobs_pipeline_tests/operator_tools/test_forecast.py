"""Tonight's forecast, from real runs: 30 recorded scheduled tier-expiration runs of about
300 downgrades, a real PostgreSQL, a real SMTP receiver and webhook server.
"""

import statistics
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from psycopg import sql
from sqlalchemy import Engine, func, select, text

from jobs_pipeline.interfaces.launching.plans import op_config_for
from jobs_pipeline.job_parts.scheduling import next_tick
from jobs_pipeline.jobs.global_override_check import global_override_check_schedule
from jobs_pipeline.jobs.promo_cleanup import promo_cleanup_schedule
from jobs_pipeline.jobs.tier_expiration import tier_expiration_job, tier_expiration_schedule
from jobs_pipeline.jobs.trial_reminder import trial_reminder_schedule
from jobs_pipeline.operator_tools.forecast import tonight_forecast_job
from jobs_pipeline.resources.alerting import AlertChannels
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.resources.mail import Mailer
from jobs_pipeline.storage.app_tables import users
from jobs_pipeline.storage.embedded import EmbeddedPostgres
from jobs_pipeline.storage.engine import create_app_engine
from jobs_pipeline.tags import forecast_abnormal_tag
from jobs_pipeline_tests.support.app_data import db_now, set_override
from jobs_pipeline_tests.support.postgres import TEMPLATE, admin_connection
from jobs_pipeline_tests.support.receivers import SmtpServer, WebhookServer
from jobs_pipeline_tests.support.running import (
    failure_message,
    job_result,
    log_messages,
    temporary_instance,
)

# What the 30 recorded nights downgraded: 285 to 315, about 300.
NIGHTS = [285 + (7 * night) % 31 for night in range(30)]
# Paying users who stay paying: enough that 3,000 downgrades pass the fixed caps (10,000
# rows, 20% of paying users), so only the learned bound can see they are not normal.
STAYING = 20_000
SCHEDULED = {"dagster/schedule_name": tier_expiration_schedule.name}
FORECAST_JOBS = ("tier_expiration", "global_override_check", "promo_cleanup", "trial_reminder")


def add_paying_users(engine: Engine, count: int, expires_at: datetime | None) -> None:
    """`count` premium users expiring at `expires_at`, in one statement."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (email, tier, tier_source, tier_expires_at)"
                " SELECT :prefix || g || '@example.com', 'premium', 'purchase', :expires_at"
                " FROM generate_series(1, :count) AS g"
            ),
            {"prefix": f"u{uuid.uuid4().hex[:12]}-", "expires_at": expires_at, "count": count},
        )


@pytest.fixture(scope="module")
def history(postgres: EmbeddedPostgres) -> Iterator[dg.DagsterInstance]:
    """An instance holding 30 successful scheduled tier-expiration runs of about 300 downgrades,
    run for real on an app database of the module's own.
    """
    name = f"forecast_history_{uuid.uuid4().hex[:8]}"
    create = sql.SQL("CREATE DATABASE {} TEMPLATE {}")
    with admin_connection(postgres) as connection:
        connection.execute(create.format(sql.Identifier(name), sql.Identifier(TEMPLATE)))
    engine = create_app_engine(postgres.url(name))
    db = AppDatabase(url=postgres.url(name), retry_delay_seconds=0.1, max_retries=1)
    add_paying_users(engine, 2_000, None)
    with temporary_instance() as instance:
        for count in NIGHTS:
            add_paying_users(engine, count, db_now(engine) - timedelta(hours=1))
            execution = tier_expiration_job.execute_in_process(
                run_config=op_config_for(tier_expiration_job),
                resources={"db": db},
                instance=instance,
                tags=SCHEDULED,
            )
            assert job_result(execution)["processed"] == count
        yield instance
    engine.dispose()
    with admin_connection(postgres) as connection:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        connection.execute(drop.format(sql.Identifier(name)))


@pytest.fixture
def channels(smtp_server: SmtpServer, webhook_server: WebhookServer) -> AlertChannels:
    return AlertChannels(
        mailer=Mailer(host=smtp_server.host, port=smtp_server.port, sender="dagster@example.com"),
        email_to="ops@example.com",
        webhook_url=webhook_server.url,
        webserver_url="http://dagster.example:3000/",
    )


def forecast_run(
    db: AppDatabase, instance: dg.DagsterInstance, channels: AlertChannels, *, succeeds=True
) -> dg.ExecuteInProcessResult:
    execution = tonight_forecast_job.execute_in_process(
        resources={"db": db, "alerts": channels}, instance=instance, raise_on_error=False
    )
    assert execution.success == succeeds
    return execution


def set_malformed_override(engine: Engine) -> None:
    """An override global-override-check cannot read: abnormal with no history at all."""
    with engine.begin() as connection:
        set_override(connection, {"tier": "gold", "expires_at": "2020-01-01T00:00:00Z"})


def next_quarter_past_midnight(now: datetime) -> datetime:
    """tier-expiration's next tick, worked out here independently of the code under test."""
    tick = now.astimezone(UTC).replace(hour=0, minute=15, second=0, microsecond=0)
    return tick if tick > now else tick + timedelta(days=1)


def expiring_tonight(engine: Engine, count: int) -> str:
    """`count` paid tiers that expire after now but before the next 00:15 tick; the tick."""
    now = db_now(engine)
    tick = next_quarter_past_midnight(now)
    add_paying_users(engine, STAYING, None)
    add_paying_users(engine, count, now + (tick - now) / 2)
    return tick.isoformat().replace("+00:00", "Z")


def forecast_line(instance: dg.DagsterInstance, execution: dg.ExecuteInProcessResult) -> str:
    (line,) = [
        m
        for m in log_messages(instance, execution)
        if m.startswith("[tonight-forecast] tier-expiration at ")
    ]
    return line


def test_next_ticks_follow_each_schedule():
    now = datetime(2026, 11, 29, 22, 0, 0, 300_000, tzinfo=UTC)  # a Sunday evening
    assert next_tick(tier_expiration_schedule, now) == datetime(2026, 11, 30, 0, 15, tzinfo=UTC)
    assert next_tick(global_override_check_schedule, now) == datetime(2026, 11, 29, 23, tzinfo=UTC)
    assert next_tick(promo_cleanup_schedule, now) == datetime(2026, 12, 6, 2, tzinfo=UTC)
    assert next_tick(trial_reminder_schedule, now) == datetime(2026, 11, 30, 9, tzinfo=UTC)
    # A tick is "next" only after now: at 23:00:00 sharp, the hourly job's next is midnight.
    on_the_hour = datetime(2026, 11, 29, 23, tzinfo=UTC)
    assert next_tick(global_override_check_schedule, on_the_hour) == datetime(
        2026, 11, 30, tzinfo=UTC
    )


def test_an_abnormal_night_alerts_once_with_the_numbers_and_the_command(
    engine, db, history, channels, smtp_server, webhook_server
):
    tick = expiring_tonight(engine, 3_000)
    command = f"jobs-pipeline run tier-expiration --dry-run --as-of {tick}"

    first = forecast_run(db, history, channels)

    line = forecast_line(history, first)
    assert line.startswith(f"[tonight-forecast] tier-expiration at {tick}: would downgrade 3000")
    assert "over 30 runs" in line and line.endswith(": ABNORMAL")
    result = job_result(first)
    assert result["abnormal"] == ["tier_expiration"]
    assert result["tier_expiration.processed.forecast"] == 3_000
    assert result["tier_expiration.processed.median"] == statistics.median(NIGHTS)
    bound = result["tier_expiration.processed.bound"]
    assert 3 * 300 < bound < 3 * 320
    # One tag per job, so abnormal forecasts are counted per job (the metrics).
    tags = history.get_run_by_id(first.run_id).tags
    assert {job: tags[forecast_abnormal_tag(job)] for job in FORECAST_JOBS} == {
        "tier_expiration": "true",
        "global_override_check": "false",
        "promo_cleanup": "false",
        "trial_reminder": "false",
    }
    (mail,) = smtp_server.mailbox.to("ops@example.com")
    assert mail["Subject"] == (
        f"[jobs-pipeline] tier-expiration forecast abnormal (run {first.run_id})"
    )
    body = mail.get_content()
    for expected in ("would downgrade 3000 users", f"bound {bound}", command):
        assert expected in body
    assert "3000 is over the learned bound" in body
    assert "its guard would stop" not in body  # the fixed caps let 3,000 of 23,000 pass
    (post,) = webhook_server.posts
    assert (post["job"], post["run_id"]) == ("tier_expiration", first.run_id)
    assert command in post["text"]
    with engine.connect() as connection:  # a forecast changes nothing
        paying = select(func.count()).select_from(users).where(users.c.tier != "free")
        assert connection.execute(paying).scalar_one() == STAYING + 3_000

    second = forecast_run(db, history, channels)

    assert forecast_line(history, second).endswith(": ABNORMAL")
    assert len(smtp_server.mailbox.received) == 1 and len(webhook_server.posts) == 1


def test_a_normal_night_sends_nothing(engine, db, history, channels, smtp_server, webhook_server):
    tick = expiring_tonight(engine, 310)

    execution = forecast_run(db, history, channels)

    line = forecast_line(history, execution)
    assert line.startswith(f"[tonight-forecast] tier-expiration at {tick}: would downgrade 310")
    assert line.endswith(": normal")
    assert job_result(execution)["abnormal"] == []
    assert smtp_server.mailbox.received == [] and webhook_server.posts == []


def test_with_no_history_the_fixed_caps_and_a_bad_override_still_alert(
    engine, db, channels, smtp_server, webhook_server
):
    """No normal is learned yet: a night over the fixed caps, and an override the job cannot
    read, are each abnormal all the same.
    """
    now = db_now(engine)
    add_paying_users(engine, 50, None)
    add_paying_users(engine, 200, now + (next_quarter_past_midnight(now) - now) / 2)
    set_malformed_override(engine)

    with temporary_instance() as instance:
        execution = forecast_run(db, instance, channels)
        line = forecast_line(instance, execution)

    assert "would downgrade 200 users (normal: not learned yet, 0 runs recorded)" in line
    assert job_result(execution)["abnormal"] == ["tier_expiration", "global_override_check"]
    posts = {post["job"]: post["text"] for post in webhook_server.posts}
    assert set(posts) == {"tier_expiration", "global_override_check"}
    assert (
        "its guard would stop the run: Refusing to downgrade paying users: this run would"
        " change 200 rows, 80% of the 250 paying users"
    ) in posts["tier_expiration"]
    assert "--allow-large" not in posts["tier_expiration"]  # a forecast is no time to allow it
    malformed = "the run would fail: global_config key 'global_tier_override' is malformed"
    assert malformed in posts["global_override_check"]
    assert (
        "jobs-pipeline run global-override-check --dry-run --as-of "
        in (posts["global_override_check"])
    )
    assert len(smtp_server.mailbox.received) == 2


def test_a_channel_that_was_down_gets_the_forecast_alert_from_the_next_run(
    engine, db, channels, smtp_server, webhook_server
):
    """The run fails (so its failure alerts); a re-run sends only what is missing."""
    set_malformed_override(engine)
    webhook_server.down = True

    with temporary_instance() as instance:
        first = forecast_run(db, instance, channels, succeeds=False)
        assert "could not be delivered (global-override-check: webhook)" in failure_message(first)
        assert len(smtp_server.mailbox.received) == 1 and webhook_server.posts == []
        # The failed run still says what it saw: tagged before the alerts were sent.
        failed = instance.get_run_by_id(first.run_id)
        assert (
            failed is not None
            and failed.tags[forecast_abnormal_tag("global_override_check")] == "true"
        )

        webhook_server.down = False
        second = forecast_run(db, instance, channels)

    (post,) = webhook_server.posts
    assert (post["job"], post["run_id"]) == ("global_override_check", second.run_id)
    assert len(smtp_server.mailbox.received) == 1
