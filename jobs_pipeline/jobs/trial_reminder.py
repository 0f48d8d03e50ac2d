"""trial-reminder: email users whose trial ends soon (daily 09:00 UTC).

Trials ending within a day get `trial-ending-1d`; those ending in one to three days
get `trial-ending-3d` (a user first seen with hours left gets only the one that
still fits, not both at once). Each reminder goes out once per user, template and
`trial_ends_at` value, so a trial the app extends re-arms its reminders. Users whose
trial has ended, or who pay (`tier_source = 'purchase'` on a paid tier), get none.
"""

from datetime import datetime, timedelta
from typing import Any

import dagster as dg
from pydantic import Field
from sqlalchemy import ColumnElement, Connection, and_, case, func, literal, not_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs_pipeline.formats import display_name, iso_utc
from jobs_pipeline.job_parts.guard import AsOfConfig, requested_as_of
from jobs_pipeline.job_parts.results import DryRunResult, JobReport, JobResult, ResultJson
from jobs_pipeline.job_parts.scheduling import job_tags, utc_schedule
from jobs_pipeline.job_parts.writers import job_step, require_project_schema, writer_pool
from jobs_pipeline.jobs.email_delivery import DeliveryConfig, deliver_pending
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.resources.mail import Mailer
from jobs_pipeline.storage.app_tables import users
from jobs_pipeline.storage.project_tables import email_outbox

JOB_NAME = "trial_reminder"
OP_NAME = "send_trial_reminders"


def reminder_template(now: datetime) -> ColumnElement[str]:
    return case(
        (users.c.trial_ends_at <= now + timedelta(days=1), literal("trial-ending-1d")),
        else_=literal("trial-ending-3d"),
    )


def is_due_a_reminder(now: datetime) -> ColumnElement[bool]:
    pays = and_(users.c.tier_source == "purchase", users.c.tier != "free")
    return and_(
        users.c.trial_ends_at > now,
        users.c.trial_ends_at <= now + timedelta(days=3),
        not_(pays),
    )


def utc_text(column: ColumnElement[Any]) -> ColumnElement[str]:
    return func.to_char(func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')


def reminders(now: datetime) -> Any:
    """(recipient, user, template, dedupe key, payload) of every reminder now due."""
    template = reminder_template(now)
    return select(
        users.c.email,
        users.c.id,
        template,
        func.concat(template, ":", users.c.id, ":", utc_text(users.c.trial_ends_at)),
        func.jsonb_build_object(
            "tier", users.c.tier, "trial_ends_at", utc_text(users.c.trial_ends_at)
        ),
    ).where(is_due_a_reminder(now))


def queue_reminders(connection: Connection, now: datetime) -> tuple[int, int]:
    """Queues every due reminder not queued before, in one statement; (3-day, 1-day) counts."""
    columns = ["recipient", "user_id", "template", "dedupe_key", "payload"]
    queued = (
        pg_insert(email_outbox)
        .from_select(columns, reminders(now))
        .on_conflict_do_nothing(index_elements=[email_outbox.c.dedupe_key])
        .returning(email_outbox.c.template)
        .cte("queued")
    )
    three_days, one_day = connection.execute(
        select(
            func.count().filter(queued.c.template == "trial-ending-3d"),
            func.count().filter(queued.c.template == "trial-ending-1d"),
        )
    ).one()
    return int(three_days), int(one_day)


def count_unqueued(connection: Connection, now: datetime) -> tuple[int, int]:
    """What a run would queue now: due reminders whose dedupe key is not in the outbox."""
    due = reminders(now).subquery()
    keys = list(due.c)
    fresh = (
        select(keys[2].label("template"))
        .where(~select(email_outbox.c.id).where(email_outbox.c.dedupe_key == keys[3]).exists())
        .subquery()
    )
    three_days, one_day = connection.execute(
        select(
            func.count().filter(fresh.c.template == "trial-ending-3d"),
            func.count().filter(fresh.c.template == "trial-ending-1d"),
        )
    ).one()
    return int(three_days), int(one_day)


class TrialReminderConfig(DeliveryConfig, AsOfConfig):
    """The outbox delivery's settings, and `as_of` for a dry run at another time."""


class TrialReminderResult(JobResult):
    # A digit does not start a word: the key is `queued3d`, not `queued3D`.
    queued3d: int = Field(validation_alias="queued3d", serialization_alias="queued3d")
    queued1d: int = Field(validation_alias="queued1d", serialization_alias="queued1d")
    sent: int
    timestamp: str

    def metric_items(self) -> dict[str, float]:
        return {
            "emails_queued_3d": self.queued3d,
            "emails_queued_1d": self.queued1d,
            "emails_sent": self.sent,
        }


class TrialReminderDryRun(DryRunResult):
    as_of: str
    would_queue3d: int = Field(validation_alias="wouldQueue3d", serialization_alias="wouldQueue3d")
    would_queue1d: int = Field(validation_alias="wouldQueue1d", serialization_alias="wouldQueue1d")
    timestamp: str


@dg.op(name=OP_NAME, pool=writer_pool("email_outbox"))
def send_trial_reminders(
    context: dg.OpExecutionContext, config: TrialReminderConfig, db: AppDatabase, mailer: Mailer
) -> dg.Output[ResultJson]:
    """Queues `trial-ending-3d` (1-3 days left) and `trial-ending-1d` (under a day left)
    once per user and trial end, skipping paying users, then delivers the outbox. A dry
    run may take `as_of`: the reminders that would be due then and are not queued yet.
    """
    report = JobReport(context, display_name(JOB_NAME))
    as_of = requested_as_of(config)
    # The outbox is the project's own table, whose claims keep senders apart: no lock.
    with job_step(context, db, writes=(), dry_run=config.dry_run):
        now = as_of if as_of is not None else db.now()
        with db.transaction() as connection:
            require_project_schema(connection)
            if config.dry_run:
                three_days, one_day = count_unqueued(connection, now)
            else:
                three_days, one_day = queue_reminders(connection, now)
        verb = "Would queue" if config.dry_run else "Queued"
        report.info(f"{verb} {three_days} 3-day and {one_day} 1-day trial reminders")
        if config.dry_run:
            return report.result(
                TrialReminderDryRun(
                    as_of=iso_utc(now),
                    would_queue3d=three_days,
                    would_queue1d=one_day,
                    timestamp=iso_utc(now),
                )
            )
        counts = deliver_pending(db, mailer, report, config)
    return report.result(
        TrialReminderResult(
            queued3d=three_days, queued1d=one_day, sent=counts.sent, timestamp=iso_utc(now)
        )
    )


@dg.job(
    name=JOB_NAME,
    description="Email users whose trial ends in 3 days or within a day (daily 09:00 UTC).",
    tags=job_tags(JOB_NAME, "low"),
)
def trial_reminder_job() -> None:
    send_trial_reminders()


trial_reminder_schedule = utc_schedule(trial_reminder_job, "0 9 * * *")
