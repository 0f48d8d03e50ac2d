"""Alerts from real failed, slow and successful runs, to a real SMTP and HTTP server."""

import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from sqlalchemy import text

from jobs_pipeline.definitions import defs
from jobs_pipeline.jobs.global_override_check import global_override_check_job
from jobs_pipeline.jobs.promo_cleanup import promo_cleanup_job
from jobs_pipeline.jobs.tier_expiration import tier_expiration_job
from jobs_pipeline.monitoring import monitoring
from jobs_pipeline.monitoring.monitoring import (
    alert_redelivery_sensor,
    failure_rate_sensor,
    long_running_run_sensor,
    run_failure_alert_sensor,
)
from jobs_pipeline.resources.alerting import AlertChannels
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.resources.mail import Mailer
from jobs_pipeline.tags import ALERT_AFTER_TAG
from jobs_pipeline_tests.support.app_data import (
    add_expired_user,
    db_now,
    set_override,
    slow_trigger,
)
from jobs_pipeline_tests.support.deadlines import finish, wait_until
from jobs_pipeline_tests.support.receivers import SmtpServer, WebhookServer
from jobs_pipeline_tests.support.running import evaluate_failure_alert, run_job, temporary_instance

MALFORMED = {"tier": "gold", "expires_at": "2020-01-01T00:00:00Z"}
ERROR_LINE = "global_config key 'global_tier_override' is malformed: 'tier' is 'gold'"


@pytest.fixture
def alert_instance() -> Iterator[dg.DagsterInstance]:
    """An instance of the test's own: the sensors look at every run in it."""
    with temporary_instance() as instance:
        yield instance


@pytest.fixture
def channels(smtp_server: SmtpServer, webhook_server: WebhookServer) -> AlertChannels:
    return AlertChannels(
        mailer=Mailer(host=smtp_server.host, port=smtp_server.port, sender="dagster@example.com"),
        email_to="ops@example.com, oncall@example.com",
        webhook_url=webhook_server.url,
        webserver_url="http://dagster.example:3000/",
    )


def failing_run(engine, db: AppDatabase, instance: dg.DagsterInstance, **tags: str):
    with engine.begin() as c:
        set_override(c, MALFORMED)
    return failing_again(db, instance, **tags)


def failing_again(db: AppDatabase, instance: dg.DagsterInstance, **tags: str):
    """Another failed run on the malformed override `failing_run` left in place."""
    execution = global_override_check_job.execute_in_process(
        resources={"db": db}, instance=instance, raise_on_error=False, tags=tags
    )
    assert not execution.success
    return execution


def evaluate_failure_sensor(instance, execution, channels: AlertChannels) -> None:
    evaluate_failure_alert(instance, instance.get_run_by_id(execution.run_id), channels)


def evaluate(sensor, instance, channels: AlertChannels, cursor: str | None = None):
    with dg.build_sensor_context(
        instance=instance, resources={"alerts": channels}, cursor=cursor, definitions=defs
    ) as context:
        sensor(context)
    return context


def test_a_failed_run_alerts_once_on_every_channel(
    engine, db, alert_instance, channels, smtp_server, webhook_server
):
    execution = failing_run(engine, db, alert_instance)

    evaluate_failure_sensor(alert_instance, execution, channels)
    evaluate_failure_sensor(alert_instance, execution, channels)  # re-evaluated: no duplicate
    evaluate(alert_redelivery_sensor, alert_instance, channels)  # nothing left to deliver

    run_id = execution.run_id
    link = f"http://dagster.example:3000/runs/{run_id}"
    (ops_mail,) = smtp_server.mailbox.to("ops@example.com")
    assert len(smtp_server.mailbox.to("oncall@example.com")) == 1
    assert ops_mail["Subject"] == f"[jobs-pipeline] global-override-check failed (run {run_id})"
    assert ops_mail["From"] == "dagster@example.com"
    body = ops_mail.get_content()
    for expected in (ERROR_LINE, f"Run {run_id} at ", link):
        assert expected in body
    (post,) = webhook_server.posts
    assert post["text"].startswith(f"global-override-check failed: {ERROR_LINE}")
    assert (post["job"], post["run_id"], post["link"]) == ("global_override_check", run_id, link)
    failed_at = datetime.fromisoformat(post["at"].replace("Z", "+00:00"))
    assert abs(failed_at - datetime.now(UTC)) < timedelta(minutes=5)
    assert "Traceback" not in post["text"] and "File " not in post["text"]


def test_a_channel_that_is_down_gets_the_alert_when_it_is_back(
    engine, db, alert_instance, channels, smtp_server, webhook_server
):
    webhook_server.down = True
    execution = failing_run(engine, db, alert_instance)

    evaluate_failure_sensor(alert_instance, execution, channels)
    assert len(smtp_server.mailbox.to("ops@example.com")) == 1
    assert webhook_server.posts == []

    evaluate(alert_redelivery_sensor, alert_instance, channels)  # still down
    assert webhook_server.posts == []

    webhook_server.down = False
    evaluate(alert_redelivery_sensor, alert_instance, channels)
    evaluate(alert_redelivery_sensor, alert_instance, channels)

    assert len(webhook_server.posts) == 1
    assert webhook_server.posts[0]["run_id"] == execution.run_id
    assert len(smtp_server.mailbox.to("ops@example.com")) == 1


def tick(sensor, instance, channels: AlertChannels, cursor: str | None = None):
    """One evaluation as the daemon does it: the sensor's own function, cursor in and out."""
    with dg.build_sensor_context(
        instance=instance, resources={"alerts": channels}, cursor=cursor, definitions=defs
    ) as context:
        return sensor.evaluate_tick(context)


def alerts_of(smtp_server: SmtpServer, webhook_server: WebhookServer, run_id: str) -> tuple:
    """(emails to ops, emails to on-call, webhook posts) about one run."""
    subject = f"(run {run_id})"
    mails = [
        len([m for m in smtp_server.mailbox.to(to) if subject in m["Subject"]])
        for to in ("ops@example.com", "oncall@example.com")
    ]
    posts = len([p for p in webhook_server.posts if p["run_id"] == run_id])
    return (*mails, posts)


def test_a_run_that_failed_before_the_first_tick_is_alerted_once(
    engine, db, alert_instance, channels, smtp_server, webhook_server
):
    early = failing_run(engine, db, alert_instance)  # a fresh deployment, before any tick
    retried = failing_again(db, alert_instance, **{"dagster/will_retry": "true"})

    first = tick(run_failure_alert_sensor, alert_instance, channels)
    assert first.skip_message and first.skip_message.startswith("Initiating")
    assert first.cursor and alerts_of(smtp_server, webhook_server, early.run_id) == (0, 0, 0)
    later = failing_again(db, alert_instance)  # after the first tick
    second = tick(run_failure_alert_sensor, alert_instance, channels, first.cursor)
    assert alerts_of(smtp_server, webhook_server, later.run_id) == (1, 1, 1)  # seen by the sensor
    assert alerts_of(smtp_server, webhook_server, early.run_id) == (0, 0, 0)  # passed over
    tick(alert_redelivery_sensor, alert_instance, channels)  # catches up `early`
    # Everything again, as the daemon's next ticks would: nothing more is sent.
    tick(run_failure_alert_sensor, alert_instance, channels, second.cursor)
    tick(run_failure_alert_sensor, alert_instance, channels)  # a fresh cursor again
    tick(alert_redelivery_sensor, alert_instance, channels)

    assert alerts_of(smtp_server, webhook_server, early.run_id) == (1, 1, 1)
    assert alerts_of(smtp_server, webhook_server, later.run_id) == (1, 1, 1)
    assert alerts_of(smtp_server, webhook_server, retried.run_id) == (0, 0, 0)
    assert len(smtp_server.mailbox.received) == 2 and len(webhook_server.posts) == 2
    run = alert_instance.get_run_by_id(early.run_id)
    assert run is not None
    assert {"log", "email", "webhook"} == {
        key.removeprefix("jobs_pipeline/alerted_failed_")
        for key in run.tags
        if key.startswith("jobs_pipeline/alerted_failed_")
    }


def test_a_failed_run_older_than_a_day_is_not_caught_up(
    engine, db, alert_instance, channels, webhook_server, monkeypatch
):
    failing_run(engine, db, alert_instance)
    # The look-back, shortened to nothing: the run now ended before it, as after 24 hours.
    monkeypatch.setattr(monitoring, "CATCH_UP_HORIZON", timedelta(0))

    tick(alert_redelivery_sensor, alert_instance, channels)

    assert webhook_server.posts == []


def test_with_no_channel_configured_the_log_still_has_the_alert(engine, db, alert_instance):
    silent = AlertChannels(mailer=Mailer())
    execution = failing_run(engine, db, alert_instance)

    evaluate_failure_sensor(alert_instance, execution, silent)

    run = alert_instance.get_run_by_id(execution.run_id)
    assert run is not None
    assert "jobs_pipeline/alerted_failed_log" in run.tags
    assert not [key for key in run.tags if key.startswith("jobs_pipeline/alerted_failed_e")]


def test_a_run_dagster_will_retry_does_not_alert_yet(
    engine, db, alert_instance, channels, smtp_server, webhook_server
):
    execution = failing_run(engine, db, alert_instance, **{"dagster/will_retry": "true"})

    evaluate_failure_sensor(alert_instance, execution, channels)

    assert smtp_server.mailbox.received == [] and webhook_server.posts == []


def test_no_secret_reaches_an_alert(
    engine, app_db_url, alert_instance, channels, smtp_server, webhook_server, monkeypatch
):
    secret = "Hunter2-smtp-password"
    monkeypatch.setenv("SMTP_PASSWORD", secret)
    with engine.begin() as c:
        set_override(c, {"tier": secret, "expires_at": "2020-01-01T00:00:00Z"})
    db = AppDatabase(url=app_db_url)
    execution = global_override_check_job.execute_in_process(
        resources={"db": db}, instance=alert_instance, raise_on_error=False
    )

    evaluate_failure_sensor(alert_instance, execution, channels)

    (mail,) = smtp_server.mailbox.to("ops@example.com")
    (post,) = webhook_server.posts
    assert secret not in mail.as_string() and secret not in json.dumps(post)
    assert "***" in post["text"]


SLOW_UPDATES = slow_trigger("users", "BEFORE UPDATE", 0.5)


def test_a_slow_run_alerts_once_while_it_is_still_going(
    engine, db, alert_instance, channels, smtp_server, webhook_server
):
    now = db_now(engine)
    with engine.begin() as c:
        for _ in range(8):
            add_expired_user(c, now)
        c.execute(text(SLOW_UPDATES))
    finished: dict[str, dg.ExecuteInProcessResult] = {}
    runner = threading.Thread(
        target=lambda: finished.update(
            run=tier_expiration_job.execute_in_process(
                run_config={"ops": {"downgrade_expired_tiers": {"config": {"batch_size": 1}}}},
                resources={"db": db},
                instance=alert_instance,
                tags={ALERT_AFTER_TAG: "1"},
            )
        )
    )
    runner.start()
    try:

        def alerted() -> bool:
            evaluate(long_running_run_sensor, alert_instance, channels)
            return bool(webhook_server.posts)

        wait_until(alerted, 300, "the slow run's alert", interval=0.5)
        evaluate(long_running_run_sensor, alert_instance, channels)
    finally:
        finish(runner, 600)

    assert finished["run"].success
    (post,) = webhook_server.posts
    assert post["kind"] == "still running" and post["run_id"] == finished["run"].run_id
    assert re.search(
        r"tier-expiration still running: running for \d+ s, past its 1 s threshold", post["text"]
    )
    assert len(smtp_server.mailbox.to("ops@example.com")) == 1
    evaluate(long_running_run_sensor, alert_instance, channels)  # finished: nothing more
    assert len(webhook_server.posts) == 1


def test_a_fast_run_never_counts_as_slow(engine, db, alert_instance, channels, webhook_server):
    assert run_job(promo_cleanup_job, db, alert_instance).success
    evaluate(long_running_run_sensor, alert_instance, channels)
    assert webhook_server.posts == []


def test_a_failure_rate_over_ten_percent_alerts_once_per_job_per_day(
    engine, db, alert_instance, channels, webhook_server
):
    for _ in range(9):
        assert run_job(promo_cleanup_job, db, alert_instance).success
    failing_run(engine, db, alert_instance)  # promo: 0 of 9; override: 1 of 1
    with engine.begin() as c:
        c.execute(text("DELETE FROM global_config"))
    for _ in range(2):
        assert run_job(global_override_check_job, db, alert_instance).success

    first = evaluate(failure_rate_sensor, alert_instance, channels)
    again = evaluate(failure_rate_sensor, alert_instance, channels, cursor=first.cursor)

    (post,) = webhook_server.posts
    assert post["job"] == "global_override_check" and post["kind"] == "failure rate"
    assert "1 of 3 runs failed in the last 24 hours (33%, over 10%)" in post["text"]
    assert again.cursor == first.cursor

    # A day later the window has closed: a rate still too high alerts again.
    state = json.loads(first.cursor or "{}")
    state["global_override_check"]["opened"] -= 25 * 3600
    evaluate(failure_rate_sensor, alert_instance, channels, cursor=json.dumps(state))
    assert len(webhook_server.posts) == 2


def test_ten_percent_exactly_does_not_alert(engine, db, alert_instance, channels, webhook_server):
    for _ in range(9):
        assert run_job(global_override_check_job, db, alert_instance).success
    failing_run(engine, db, alert_instance)

    evaluate(failure_rate_sensor, alert_instance, channels)

    assert webhook_server.posts == []
