"""history-retention: delete the history the project keeps past its retention (daily 03:30 UTC).

The change ledger (every row a job changed, before and after) is what `undo` and `why`
read; past its retention (90 days by default, never within the undo window) a run can
no longer be undone, and its rows are deleted, oldest first, in bounded batches (one
short transaction each), so the deletion never holds the table for long. A dry run
counts what would go and deletes nothing.
"""

from collections.abc import Sequence
from datetime import datetime, timedelta

import dagster as dg
from pydantic import Field
from sqlalchemy import Connection, Row, delete, func, select

from jobs_pipeline.formats import display_name, iso_utc
from jobs_pipeline.job_parts.batching import run_batches
from jobs_pipeline.job_parts.results import (
    DryRunConfig,
    DryRunResult,
    JobReport,
    JobResult,
    ResultJson,
)
from jobs_pipeline.job_parts.scheduling import job_tags, utc_schedule
from jobs_pipeline.job_parts.writers import job_step, require_project_schema
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.storage.ledger import DEFAULT_RETENTION_DAYS, UNDO_WINDOW_DAYS
from jobs_pipeline.storage.project_tables import change_ledger

JOB_NAME = "history_retention"
OP_NAME = "delete_old_history"


class HistoryRetentionConfig(DryRunConfig):
    ledger_retention_days: int = Field(
        default=DEFAULT_RETENTION_DAYS,
        gt=UNDO_WINDOW_DAYS,
        le=36_500,
        description=(
            "Change-ledger rows older than this many days are deleted; past it a run can no"
            f" longer be undone (longer than the undo window, {UNDO_WINDOW_DAYS} days)."
        ),
    )
    batch_size: int = Field(
        default=5_000, ge=1, le=100_000, description="Rows deleted per transaction."
    )


class HistoryRetentionResult(JobResult):
    ledger_rows_deleted: int
    timestamp: str

    def metric_items(self) -> dict[str, float]:
        return {"ledger_rows_deleted": self.ledger_rows_deleted}


class HistoryRetentionDryRun(DryRunResult):
    would_delete_ledger_rows: int
    timestamp: str


def count_old_ledger_rows(connection: Connection, older_than: datetime) -> int:
    return int(
        connection.execute(
            select(func.count())
            .select_from(change_ledger)
            .where(change_ledger.c.changed_at < older_than)
        ).scalar_one()
    )


def delete_old_ledger_rows(db: AppDatabase, older_than: datetime, batch_size: int) -> int:
    """The ledger's rows older than `older_than`, oldest first, `batch_size` a transaction."""

    def delete_batch(connection: Connection) -> Sequence[Row[int]]:
        oldest = (
            select(change_ledger.c.id)
            .where(change_ledger.c.changed_at < older_than)
            .order_by(change_ledger.c.id)
            .limit(batch_size)
            .scalar_subquery()
        )
        return connection.execute(
            delete(change_ledger)
            .where(change_ledger.c.id.in_(oldest))
            .returning(change_ledger.c.id)
        ).all()

    return sum(len(batch) for batch in run_batches(db, delete_batch, batch_size))


@dg.op(name=OP_NAME)
def delete_old_history(
    context: dg.OpExecutionContext, config: HistoryRetentionConfig, db: AppDatabase
) -> dg.Output[ResultJson]:
    """Deletes change-ledger rows older than `ledger_retention_days` (90 by default, always
    longer than the undo window), in bounded batches.
    """
    report = JobReport(context, display_name(JOB_NAME))
    # The ledger is the project's own table, appended to by one statement per change: the
    # rows deleted here are long past any writer, so no writer lock is taken.
    with job_step(context, db, writes=(), dry_run=config.dry_run):
        now = db.now()
        older_than = now - timedelta(days=config.ledger_retention_days)
        with db.transaction() as connection:
            require_project_schema(connection)
            old = count_old_ledger_rows(connection, older_than)
        if config.dry_run:
            report.info(f"Would delete {old} change-ledger rows older than {iso_utc(older_than)}")
            return report.result(
                HistoryRetentionDryRun(would_delete_ledger_rows=old, timestamp=iso_utc(now))
            )
        deleted = delete_old_ledger_rows(db, older_than, config.batch_size)
        report.info(f"Deleted {deleted} change-ledger rows older than {iso_utc(older_than)}")
        return report.result(
            HistoryRetentionResult(ledger_rows_deleted=deleted, timestamp=iso_utc(now))
        )


@dg.job(
    name=JOB_NAME,
    description="Delete the history kept past its retention: the change ledger (daily 03:30 UTC).",
    tags=job_tags(JOB_NAME, "low"),
)
def history_retention_job() -> None:
    delete_old_history()


history_retention_schedule = utc_schedule(history_retention_job, "30 3 * * *")
