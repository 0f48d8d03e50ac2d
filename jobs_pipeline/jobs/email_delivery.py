"""email-delivery: send what the outbox holds (every 5 minutes).

One message at a time: claim it (its own transaction), send it, record the outcome
(its own transaction). See jobs_pipeline.emails.rendering for why delivery is at-most-once.
A failed send is retried with exponential backoff up to `max_attempts`, and keeps
its last error for operators to read. Without SMTP the messages become .eml files,
and the run's log says once where they went (see `report_eml_folder`).
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import dagster as dg
from pydantic import Field
from sqlalchemy import Connection, Row, and_, func, select, update

from jobs_pipeline.emails.rendering import render
from jobs_pipeline.formats import display_name, iso_utc
from jobs_pipeline.job_parts.results import (
    DryRunConfig,
    DryRunResult,
    JobReport,
    JobResult,
    ResultJson,
)
from jobs_pipeline.job_parts.scheduling import job_tags, utc_schedule
from jobs_pipeline.job_parts.writers import job_step, require_project_schema, writer_pool
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.resources.mail import Mailer
from jobs_pipeline.storage.project_tables import email_outbox

JOB_NAME = "email_delivery"
OP_NAME = "deliver_emails"
UNCONFIRMED_NOTE = (
    "claimed by a run that ended before recording the outcome; not resent (at-most-once)"
)


class DeliveryConfig(DryRunConfig):
    max_messages: int = Field(default=1_000, ge=1, description="Messages sent per run at most.")
    max_attempts: int = Field(default=5, ge=1, le=20, description="Sends tried per message.")
    backoff_seconds: int = Field(
        default=60, ge=0, description="Wait before the 2nd try; it doubles with each try."
    )
    claim_grace_minutes: int = Field(
        default=15, ge=1, description="A claim older than this belongs to a run that died."
    )


@dataclass
class DeliveryCounts:
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    unconfirmed: int = 0


def claim_next(connection: Connection, now: datetime) -> Row[Any] | None:
    """Marks the next due message `sending`, so no other run or retry sends it."""
    due = (
        select(email_outbox.c.id)
        .where(email_outbox.c.status == "pending", email_outbox.c.next_attempt_at <= now)
        .order_by(email_outbox.c.next_attempt_at, email_outbox.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return connection.execute(
        update(email_outbox)
        .where(email_outbox.c.id == due, email_outbox.c.status == "pending")
        .values(
            status="sending",
            claimed_at=func.clock_timestamp(),
            attempts=email_outbox.c.attempts + 1,
        )
        .returning(
            email_outbox.c.id,
            email_outbox.c.recipient,
            email_outbox.c.template,
            email_outbox.c.payload,
            email_outbox.c.dedupe_key,
            email_outbox.c.attempts,
        )
    ).first()


def record_sent(connection: Connection, message_id: int) -> None:
    connection.execute(
        update(email_outbox)
        .where(email_outbox.c.id == message_id, email_outbox.c.status == "sending")
        .values(status="sent", sent_at=func.clock_timestamp(), last_error=None)
    )


def record_failure(
    connection: Connection, message_id: int, error: str, *, retry_in: timedelta | None
) -> None:
    """Back to `pending` after `retry_in`, or `failed` for good when it is None."""
    values: dict[str, Any] = {"last_error": error[:2000]}
    if retry_in is None:
        values["status"] = "failed"
    else:
        values["status"] = "pending"
        values["next_attempt_at"] = func.clock_timestamp() + retry_in
    connection.execute(
        update(email_outbox)
        .where(email_outbox.c.id == message_id, email_outbox.c.status == "sending")
        .values(**values)
    )


def mark_abandoned_claims(connection: Connection, now: datetime, grace: timedelta) -> int:
    """Claims older than `grace` belong to a run that died: they become `unconfirmed`."""
    rows = connection.execute(
        update(email_outbox)
        .where(email_outbox.c.status == "sending", email_outbox.c.claimed_at < now - grace)
        .values(status="unconfirmed", last_error=UNCONFIRMED_NOTE)
        .returning(email_outbox.c.id)
    ).all()
    return len(rows)


def count_due(connection: Connection, now: datetime) -> int:
    return int(
        connection.execute(
            select(func.count())
            .select_from(email_outbox)
            .where(and_(email_outbox.c.status == "pending", email_outbox.c.next_attempt_at <= now))
        ).scalar_one()
    )


def retry_delay(config: DeliveryConfig, attempts: int) -> timedelta | None:
    if attempts >= config.max_attempts:
        return None
    return timedelta(seconds=config.backoff_seconds * 2 ** (attempts - 1))


def send_one(
    db: AppDatabase, mailer: Mailer, report: JobReport, config: DeliveryConfig, now: datetime
) -> str | None:
    """Claims, sends and records one message; returns its outcome, None when none was due."""
    with db.transaction() as connection:
        claimed = claim_next(connection, now)
    if claimed is None:
        return None
    message_id, template = int(claimed.id), str(claimed.template)
    try:
        message = render(
            template, claimed.recipient, dict(claimed.payload), dedupe_key=claimed.dedupe_key
        )
    except Exception as error:  # a message that cannot be built never will be
        return record_and_report(db, report, message_id, template, error, retry_in=None)
    try:
        mailer.send(message)
    except Exception as error:  # any send fault is recorded on its row, to try again
        retry_in = retry_delay(config, int(claimed.attempts))
        return record_and_report(db, report, message_id, template, error, retry_in=retry_in)
    with db.transaction() as connection:
        record_sent(connection, message_id)
    report.row(f"Sent {template} email {message_id}")
    return "sent"


def record_and_report(
    db: AppDatabase,
    report: JobReport,
    message_id: int,
    template: str,
    error: Exception,
    *,
    retry_in: timedelta | None,
) -> str:
    description = f"{type(error).__name__}: {error}"
    with db.transaction() as connection:
        record_failure(connection, message_id, description, retry_in=retry_in)
    outcome = "retrying" if retry_in is not None else "failed"
    report.warning(f"Email {message_id} ({template}) {outcome}: {description}")
    return outcome


def deliver_pending(
    db: AppDatabase, mailer: Mailer, report: JobReport, config: DeliveryConfig
) -> DeliveryCounts:
    counts = DeliveryCounts()
    now = db.now()
    with db.transaction() as connection:
        require_project_schema(connection)
        counts.unconfirmed = mark_abandoned_claims(
            connection, now, timedelta(minutes=config.claim_grace_minutes)
        )
    if counts.unconfirmed:
        report.warning(
            f"{counts.unconfirmed} emails were claimed by a run that died: {UNCONFIRMED_NOTE}"
        )
    for _ in range(config.max_messages):
        outcome = send_one(db, mailer, report, config, now)
        if outcome is None:
            break
        setattr(counts, outcome, getattr(counts, outcome) + 1)
    report.end_rows("emails sent")
    report_eml_folder(mailer, report, counts.sent)
    return counts


def report_eml_folder(mailer: Mailer, report: JobReport, written: int) -> None:
    """Says once per run where .eml files went: the folder follows JOBS_PIPELINE_STATE_DIR
    (not DATABASE_URL), and a developer would otherwise have to guess it.
    """
    folder = mailer.eml_folder()
    if folder is not None and written:
        emails = "email" if written == 1 else "emails"
        report.info(f"Wrote {written} {emails} as .eml files to {folder} (no SMTP_HOST set)")


class EmailDeliveryResult(JobResult):
    sent: int
    retrying: int
    failed: int
    unconfirmed: int
    timestamp: str

    def metric_items(self) -> dict[str, float]:
        return {
            "emails_sent": self.sent,
            "emails_failed": self.failed,
            "emails_retrying": self.retrying,
            "emails_unconfirmed": self.unconfirmed,
        }


class EmailDeliveryDryRun(DryRunResult):
    would_send: int
    timestamp: str


@dg.op(name=OP_NAME, pool=writer_pool("email_outbox"))
def deliver_emails(
    context: dg.OpExecutionContext, config: DeliveryConfig, db: AppDatabase, mailer: Mailer
) -> dg.Output[ResultJson]:
    """Sends the outbox's due emails (SMTP, or .eml files without SMTP), one at a time;
    a failed send is retried later with backoff, and gives up after `max_attempts`.
    """
    report = JobReport(context, display_name(JOB_NAME))
    # The outbox is the project's own table, whose claims keep senders apart: no lock.
    with job_step(context, db, writes=(), dry_run=config.dry_run):
        if config.dry_run:
            now = db.now()
            with db.transaction() as connection:
                require_project_schema(connection)
                due = count_due(connection, now)
            report.info(f"Would send {due} due emails")
            return report.result(EmailDeliveryDryRun(would_send=due, timestamp=iso_utc(now)))
        counts = deliver_pending(db, mailer, report, config)
    report.info(f"Sent {counts.sent} emails")
    return report.result(
        EmailDeliveryResult(
            sent=counts.sent,
            retrying=counts.retrying,
            failed=counts.failed,
            unconfirmed=counts.unconfirmed,
            timestamp=iso_utc(db.now()),
        )
    )


@dg.job(
    name=JOB_NAME,
    description="Send the queued emails: trial reminders, tier-expired (every 5 minutes).",
    tags=job_tags(JOB_NAME, "low"),
)
def email_delivery_job() -> None:
    deliver_emails()


email_delivery_schedule = utc_schedule(email_delivery_job, "*/5 * * * *")
