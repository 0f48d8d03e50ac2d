"""Trial reminders and tier-expired emails: queued once, delivered at most once."""

import asyncio
import re
import signal
import subprocess
import time
from datetime import timedelta
from email import message_from_bytes, policy
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import func, select, text, update

from jobs_pipeline.emails.rendering import message_id
from jobs_pipeline.jobs.email_delivery import email_delivery_job
from jobs_pipeline.jobs.tier_expiration import tier_expiration_job
from jobs_pipeline.jobs.trial_reminder import trial_reminder_job
from jobs_pipeline.resources.mail import Mailer
from jobs_pipeline.storage.app_tables import users
from jobs_pipeline.storage.project_tables import email_outbox
from jobs_pipeline_tests.support.app_data import add_expired_user, add_user, db_now, slow_trigger
from jobs_pipeline_tests.support.deadlines import deadline
from jobs_pipeline_tests.support.processes import (
    JOBS_PIPELINE,
    cli_environment,
    free_port,
    kill,
    run_cli,
    start_job_process,
)
from jobs_pipeline_tests.support.receivers import Mailbox, SmtpServer
from jobs_pipeline_tests.support.running import failure_message, job_result, log_messages

ONE_DAY = timedelta(days=1)
TEMPLATE = "X-Jobs-Pipeline-Template"
HASHED_ID = re.compile(r"<[0-9a-f]{32}@jobs-pipeline>")


def run(job, db, instance, mailer: Mailer, **config: Any):
    op_name = next(iter(job.nodes_in_topological_order)).name
    return job.execute_in_process(
        run_config={"ops": {op_name: {"config": config}}} if config else None,
        resources={"db": db, "mailer": mailer},
        instance=instance,
        raise_on_error=False,
    )


@pytest.fixture
def mailer(smtp_server: SmtpServer) -> Mailer:
    return Mailer(host=smtp_server.host, port=smtp_server.port, sender="journal@example.com")


def outbox(engine) -> list[dict[str, Any]]:
    with engine.connect() as c:
        rows = c.execute(select(email_outbox).order_by(email_outbox.c.id)).all()
    return [dict(row._mapping) for row in rows]


def assert_says_what_it_is(mail: Any, row: dict[str, Any]) -> None:
    """The template's name, and a Message-ID from the row's dedupe key with nothing personal."""
    assert mail[TEMPLATE] == row["template"]
    assert mail["Message-ID"] == message_id(row["dedupe_key"])
    assert HASHED_ID.fullmatch(mail["Message-ID"])
    assert str(row["user_id"]) not in mail["Message-ID"] and "@example" not in mail["Message-ID"]


def test_reminders_at_the_three_day_and_one_day_edges(engine, db, instance, mailer, smtp_server):
    now = db_now(engine)
    with engine.begin() as c:
        three_days = add_user(
            c,
            email="three@example.com",
            tier="premium",
            tier_source="trial",
            trial_ends_at=now + 3 * ONE_DAY - timedelta(minutes=5),
        )
        add_user(
            c,
            email="too-early@example.com",
            tier="premium",
            tier_source="trial",
            trial_ends_at=now + 3 * ONE_DAY + timedelta(minutes=5),
        )
        add_user(
            c,
            email="two-days@example.com",
            tier="pro",
            tier_source="promo",
            trial_ends_at=now + ONE_DAY + timedelta(minutes=5),
        )
        add_user(
            c,
            email="hours@example.com",
            tier="premium",
            tier_source="trial",
            trial_ends_at=now + ONE_DAY - timedelta(minutes=5),
        )
        add_user(
            c,
            email="ended@example.com",
            tier="premium",
            tier_source="trial",
            trial_ends_at=now - timedelta(minutes=5),
        )
        add_user(
            c,
            email="payer@example.com",
            tier="premium",
            tier_source="purchase",
            trial_ends_at=now + 2 * ONE_DAY,
        )

    execution = run(trial_reminder_job, db, instance, mailer)

    assert execution.success, failure_message(execution)
    result = job_result(execution)
    assert (result["queued3d"], result["queued1d"], result["sent"]) == (2, 1, 3)
    box = smtp_server.mailbox
    (first,) = box.to("three@example.com")
    assert first["Subject"] == "Your Premium trial ends in 3 days"
    assert first["From"] == "journal@example.com"
    assert "Hi three," in first.get_body(("plain",)).get_content()
    assert "<strong>Premium</strong>" in first.get_body(("html",)).get_content()
    assert box.to("two-days@example.com")[0]["Subject"] == "Your Pro trial ends in 3 days"
    assert box.to("hours@example.com")[0]["Subject"] == "Your Premium trial ends tomorrow"
    for nobody in ("too-early", "ended", "payer"):
        assert box.to(f"{nobody}@example.com") == []
    assert {row["user_id"] for row in outbox(engine)} >= {three_days}
    assert {row["status"] for row in outbox(engine)} == {"sent"}
    rows = {row["recipient"]: row for row in outbox(engine)}
    for recipient, template in (
        ("three@example.com", "trial-ending-3d"),
        ("two-days@example.com", "trial-ending-3d"),
        ("hours@example.com", "trial-ending-1d"),
    ):
        (mail,) = box.to(recipient)
        assert rows[recipient]["template"] == template
        assert_says_what_it_is(mail, rows[recipient])


def test_each_reminder_goes_once_and_an_extended_trial_rearms_it(
    engine, db, instance, mailer, smtp_server
):
    now = db_now(engine)
    with engine.begin() as c:
        user_id = add_user(
            c,
            email="t@example.com",
            tier="premium",
            tier_source="trial",
            trial_ends_at=now + 2 * ONE_DAY,
        )
    run(trial_reminder_job, db, instance, mailer)
    again = run(trial_reminder_job, db, instance, mailer)
    assert job_result(again)["queued3d"] == 0
    assert len(smtp_server.mailbox.to("t@example.com")) == 1

    with engine.begin() as c:  # the app extends the trial by a day
        c.execute(
            update(users)
            .where(users.c.id == user_id)
            .values(trial_ends_at=users.c.trial_ends_at + timedelta(hours=20))
        )
    extended = run(trial_reminder_job, db, instance, mailer)
    assert job_result(extended)["queued3d"] == 1

    with engine.begin() as c:  # later, under a day left
        c.execute(
            update(users)
            .where(users.c.id == user_id)
            .values(trial_ends_at=func.now() + timedelta(hours=10))
        )
    last_day = run(trial_reminder_job, db, instance, mailer)
    assert (job_result(last_day)["queued3d"], job_result(last_day)["queued1d"]) == (0, 1)
    subjects = [m["Subject"] for m in smtp_server.mailbox.to("t@example.com")]
    assert subjects == [
        "Your Premium trial ends in 3 days",
        "Your Premium trial ends in 3 days",
        "Your Premium trial ends tomorrow",
    ]


def test_dry_run_queues_and_sends_nothing(engine, db, instance, mailer, smtp_server):
    now = db_now(engine)
    with engine.begin() as c:
        add_user(c, tier="premium", tier_source="trial", trial_ends_at=now + 2 * ONE_DAY)

    execution = run(trial_reminder_job, db, instance, mailer, dry_run=True)

    assert job_result(execution)["wouldQueue3d"] == 1
    assert outbox(engine) == [] and smtp_server.mailbox.received == []


def test_each_downgrade_queues_one_tier_expired_email(engine, db, instance, mailer, smtp_server):
    now = db_now(engine)
    with engine.begin() as c:
        expired = [add_expired_user(c, now, "pro") for _ in range(3)]
        add_user(c, tier="premium", tier_expires_at=now + ONE_DAY)

    assert tier_expiration_job.execute_in_process(resources={"db": db}, instance=instance).success
    tier_expiration_job.execute_in_process(resources={"db": db}, instance=instance)

    rows = outbox(engine)
    assert sorted(row["user_id"] for row in rows) == sorted(expired)
    assert {row["template"] for row in rows} == {"tier-expired"}
    assert all(row["payload"]["previous_tier"] == "pro" for row in rows)
    delivered = run(email_delivery_job, db, instance, mailer)
    assert job_result(delivered)["sent"] == 3
    with engine.connect() as c:
        emails = c.execute(select(users.c.email).where(users.c.id.in_(expired))).scalars()
        for email in emails:
            (mail,) = smtp_server.mailbox.to(email)
            assert mail["Subject"] == "Your Pro plan has ended"
    for row in outbox(engine):
        (mail,) = smtp_server.mailbox.to(row["recipient"])
        assert mail[TEMPLATE] == "tier-expired"
        assert_says_what_it_is(mail, row)
    assert len({m["Message-ID"] for _, m in smtp_server.mailbox.received}) == 3


def test_a_message_sent_again_carries_the_same_message_id(
    engine, db, instance, mailer, smtp_server
):
    now = db_now(engine)
    with engine.begin() as c:
        add_expired_user(c, now, "premium", email="again@example.com")
    assert tier_expiration_job.execute_in_process(resources={"db": db}, instance=instance).success
    assert job_result(run(email_delivery_job, db, instance, mailer))["sent"] == 1

    with engine.begin() as c:  # an operator re-queues the row by mistake
        c.execute(update(email_outbox).values(status="pending", next_attempt_at=func.now()))
    assert job_result(run(email_delivery_job, db, instance, mailer))["sent"] == 1

    first, second = smtp_server.mailbox.to("again@example.com")
    assert first["Message-ID"] == second["Message-ID"]  # a receiver can drop the second
    (row,) = outbox(engine)
    assert_says_what_it_is(second, row)


def test_a_failed_send_is_retried_with_backoff_then_given_up(engine, db, instance, smtp_server):
    now = db_now(engine)
    with engine.begin() as c:
        add_user(
            c,
            email="r@example.com",
            tier="premium",
            tier_source="trial",
            trial_ends_at=now + 2 * ONE_DAY,
        )
    nobody_listens = Mailer(host="127.0.0.1", port=free_port(), timeout_seconds=2)

    first = run(trial_reminder_job, db, instance, nobody_listens, backoff_seconds=600)
    (row,) = outbox(engine)
    assert job_result(first)["sent"] == 0
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert "ConnectionRefusedError" in row["last_error"]
    assert timedelta(minutes=9) < row["next_attempt_at"] - db_now(engine) <= timedelta(minutes=10)

    not_yet = run(email_delivery_job, db, instance, nobody_listens, max_attempts=2)
    assert job_result(not_yet)["retrying"] == 0  # not due: nothing tried

    with engine.begin() as c:
        c.execute(update(email_outbox).values(next_attempt_at=func.now()))
    last_try = run(email_delivery_job, db, instance, nobody_listens, max_attempts=2)
    (row,) = outbox(engine)
    assert job_result(last_try)["failed"] == 1
    assert (row["status"], row["attempts"]) == ("failed", 2)
    assert smtp_server.mailbox.received == []


def test_without_smtp_the_emails_are_eml_files(engine, db, instance, tmp_path):
    now = db_now(engine)
    with engine.begin() as c:
        add_expired_user(c, now, "premium", email="eml@example.com")
    assert tier_expiration_job.execute_in_process(resources={"db": db}, instance=instance).success

    outbox_dir = tmp_path / "outbox"
    delivered = run(email_delivery_job, db, instance, Mailer(outbox_dir=str(outbox_dir)))

    assert job_result(delivered)["sent"] == 1
    (eml,) = outbox_dir.glob("*.eml")
    content = eml.read_text()
    assert "To: eml@example.com" in content and "text/html" in content and "text/plain" in content
    (row,) = outbox(engine)
    assert_says_what_it_is(message_from_bytes(eml.read_bytes(), policy=policy.default), row)
    wrote = [m for m in log_messages(instance, delivered) if "as .eml files" in m]
    assert wrote == [
        f"[email-delivery] Wrote 1 email as .eml files to {outbox_dir} (no SMTP_HOST set)"
    ]


def test_trial_reminder_says_once_where_its_eml_files_went(engine, db, instance, tmp_path):
    now = db_now(engine)
    with engine.begin() as c:
        for n in range(3):
            add_user(
                c,
                email=f"eml{n}@example.com",
                tier="premium",
                tier_source="trial",
                trial_ends_at=now + 2 * ONE_DAY,
            )
    outbox_dir = tmp_path / "outbox"

    execution = run(trial_reminder_job, db, instance, Mailer(outbox_dir=str(outbox_dir)))

    assert job_result(execution)["sent"] == 3
    assert len(list(outbox_dir.glob("*.eml"))) == 3
    wrote = [m for m in log_messages(instance, execution) if "as .eml files" in m]
    assert wrote == [
        f"[trial-reminder] Wrote 3 emails as .eml files to {outbox_dir} (no SMTP_HOST set)"
    ]


def test_over_smtp_no_eml_folder_is_logged(engine, db, instance, mailer, smtp_server):
    now = db_now(engine)
    with engine.begin() as c:
        add_expired_user(c, now, "premium")
    assert tier_expiration_job.execute_in_process(resources={"db": db}, instance=instance).success

    delivered = run(email_delivery_job, db, instance, mailer)

    assert job_result(delivered)["sent"] == 1 and len(smtp_server.mailbox.received) == 1
    assert not [m for m in log_messages(instance, delivered) if ".eml" in m]


def test_the_cli_writes_eml_files_under_the_state_folder_whatever_database_url_says(
    engine, db, instance, app_db_url, tmp_path
):
    now = db_now(engine)
    with engine.begin() as c:
        add_expired_user(c, now, "premium", email="cli-eml@example.com")
    assert tier_expiration_job.execute_in_process(resources={"db": db}, instance=instance).success
    state = tmp_path / "state"
    env = cli_environment(state, DATABASE_URL=app_db_url)  # another database than the embedded
    env.pop("SMTP_HOST", None)

    done = run_cli("run", "email-delivery", env=env, cwd=tmp_path)

    assert done.returncode == 0, done.stderr[-3000:]
    folder = state.resolve() / "outbox"
    (eml,) = folder.glob("*.eml")
    assert message_from_bytes(eml.read_bytes(), policy=policy.default)[TEMPLATE] == "tier-expired"
    line = f"[email-delivery] Wrote 1 email as .eml files to {folder} (no SMTP_HOST set)"
    assert done.stderr.count(line) == 1, done.stderr[-3000:]
    assert not (state / "pgdata").exists()  # DATABASE_URL was used; no embedded server started


class SlowMailbox(Mailbox):
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(0.3)
        return await super().handle_DATA(server, session, envelope)


def test_a_delivery_killed_midway_and_run_again_sends_nothing_twice(
    engine, db, instance, app_db_url, tmp_path
):
    now = db_now(engine)
    with engine.begin() as c:
        for n in range(15):
            add_expired_user(c, now, email=f"k{n}@example.com")
    assert tier_expiration_job.execute_in_process(resources={"db": db}, instance=instance).success
    mailbox = SlowMailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    delivery = None
    try:
        env = cli_environment(
            tmp_path / "state", DATABASE_URL=app_db_url, SMTP_HOST="127.0.0.1", SMTP_PORT=str(port)
        )
        delivery = subprocess.Popen(
            [str(JOBS_PIPELINE), "run", "email-delivery"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline_at = time.monotonic() + deadline(60)
        while len(mailbox.received) < 3 and time.monotonic() < deadline_at:
            time.sleep(0.05)
        delivery.send_signal(signal.SIGKILL)
        delivery.wait(timeout=10)
        received_before = len(mailbox.received)
        assert 3 <= received_before < 15

        rerun = run(email_delivery_job, db, instance, Mailer(host="127.0.0.1", port=port))
        assert rerun.success
    finally:
        if delivery is not None and delivery.poll() is None:
            delivery.kill()
            delivery.wait(timeout=10)
        controller.stop()

    per_recipient = [len(mailbox.to(f"k{n}@example.com")) for n in range(15)]
    assert max(per_recipient) == 1, per_recipient
    statuses = [row["status"] for row in outbox(engine)]
    assert statuses.count("sent") + statuses.count("sending") == 15
    assert statuses.count("sending") <= 1  # the one in flight when the run died
    assert sum(per_recipient) >= statuses.count("sent")


SLOW_DOWNGRADES = slow_trigger("users", "BEFORE UPDATE", 0.1)


def test_a_downgrade_killed_midway_keeps_every_email_with_its_downgrade(
    engine, db, instance, app_db_url, tmp_path
):
    now = db_now(engine)
    with engine.begin() as c:
        for _ in range(40):
            add_expired_user(c, now)
        c.execute(text(SLOW_DOWNGRADES))
    # A process of its own, in small batches (each its own transaction), to kill midway.
    job = start_job_process(app_db_url, "tier_expiration", batch_size=2)

    def downgraded() -> set:
        with engine.connect() as c:
            return set(c.execute(select(users.c.id).where(users.c.tier == "free")).scalars())

    deadline_at = time.monotonic() + deadline(60)
    while not downgraded() and time.monotonic() < deadline_at:
        time.sleep(0.1)
    kill(job, engine)

    halfway = downgraded()
    assert 0 < len(halfway) < 40
    assert {row["user_id"] for row in outbox(engine)} == halfway

    assert tier_expiration_job.execute_in_process(resources={"db": db}, instance=instance).success
    rows = outbox(engine)
    assert len(rows) == len({row["user_id"] for row in rows}) == 40 == len(downgraded())
