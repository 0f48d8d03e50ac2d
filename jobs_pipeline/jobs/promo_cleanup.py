"""promo-cleanup: deactivate expired promo codes, delete old redemptions (Sundays 02:00 UTC).

Both steps run in bounded batches, each its own short transaction, so the app's
tables are never locked for long; rows the app holds locked are skipped and taken
by the next run. A code with `valid_until IS NULL` never expires.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg
from pydantic import Field
from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Table,
    and_,
    delete,
    func,
    select,
    true,
    update,
)

from jobs_pipeline.formats import display_name, iso_utc
from jobs_pipeline.job_parts.batching import locked_batch, run_batches
from jobs_pipeline.job_parts.guard import (
    AsOfConfig,
    Caps,
    Change,
    Learned,
    LearnedGuardConfig,
    guard_change,
    requested_as_of,
)
from jobs_pipeline.job_parts.results import (
    LOG_LINE_CAP,
    DryRunResult,
    JobReport,
    JobResult,
    ResultJson,
)
from jobs_pipeline.job_parts.scheduling import job_tags, utc_schedule
from jobs_pipeline.job_parts.writers import job_step, writer_pool
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.storage import ledger
from jobs_pipeline.storage.app_tables import promo_codes, promo_redemptions
from jobs_pipeline.storage.ledger import RunIdentity

JOB_NAME = "promo_cleanup"
OP_NAME = "clean_up_promo_codes"
WRITES = ("promo_codes", "promo_redemptions")
# Fixed caps of the blast-radius guard, beside `max_share`.
CODES_CAP = 10_000
REDEMPTIONS_CAP = 1_000_000


class PromoCleanupConfig(AsOfConfig, LearnedGuardConfig):
    redemption_retention_days: int = Field(
        default=365,
        ge=1,
        le=36_500,
        description="Redemptions older than this many days are deleted.",
    )
    batch_size: int = Field(
        default=5_000, ge=1, le=100_000, description="Rows changed per transaction."
    )
    max_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="A run that would deactivate or delete more than this share stops first.",
    )
    learned_codes_floor: int = Field(
        default=100, ge=0, description="The learned bound on codes deactivated is never below this."
    )
    learned_redemptions_floor: int = Field(
        default=1_000,
        ge=0,
        description="The learned bound on redemptions deleted is never below this.",
    )


def is_expired_active_code(now: datetime) -> ColumnElement[bool]:
    return and_(
        promo_codes.c.is_active.is_(True),
        promo_codes.c.valid_until.is_not(None),
        promo_codes.c.valid_until < now,
    )


def is_old_redemption(cutoff: datetime) -> ColumnElement[bool]:
    return promo_redemptions.c.redeemed_at < cutoff


def deactivate_codes(
    connection: Connection, now: datetime, run: RunIdentity, *, limit: int
) -> Sequence[Row[uuid.UUID, str]]:
    """Deactivates up to `limit` unlocked expired codes, re-checking the rule as it
    writes, and records each in the ledger in the same statement.
    """
    locked = locked_batch(
        [promo_codes.c.id], is_expired_active_code(now), order_by=promo_codes.c.id, limit=limit
    )
    deactivated = (
        update(promo_codes)
        .where(promo_codes.c.id == locked.c.id, is_expired_active_code(now))
        .values(is_active=False)
        .returning(promo_codes.c.id, promo_codes.c.code, promo_codes.c.valid_until)
        .cte("deactivated")
    )
    recorded = ledger.record(
        deactivated,
        run,
        table="promo_codes",
        key=deactivated.c.id,
        before=func.jsonb_build_object("is_active", True),
        after=func.jsonb_build_object("is_active", False),
        reason=func.concat(
            "valid_until ",
            ledger.utc_text(deactivated.c.valid_until),
            " < run time ",
            ledger.utc_text(now),
        ),
    ).cte("recorded")
    statement = select(deactivated.c.id, deactivated.c.code).add_cte(recorded)
    return connection.execute(statement).all()


def delete_redemptions(
    connection: Connection, cutoff: datetime, run: RunIdentity, *, limit: int
) -> Sequence[Row[uuid.UUID]]:
    """Deletes up to `limit` unlocked redemptions older than `cutoff`, oldest first; the
    ledger keeps each whole row, so a deletion can be undone within the undo window.
    """
    locked = locked_batch(
        [promo_redemptions.c.id],
        is_old_redemption(cutoff),
        order_by=promo_redemptions.c.redeemed_at,
        limit=limit,
    )
    deleted = (
        delete(promo_redemptions)
        .where(promo_redemptions.c.id == locked.c.id, is_old_redemption(cutoff))
        .returning(*promo_redemptions.c)
        .cte("deleted")
    )
    d = deleted.c
    recorded = ledger.record(
        deleted,
        run,
        table="promo_redemptions",
        key=d.id,
        before=func.jsonb_build_object(
            "id",
            d.id,
            "promo_code_id",
            d.promo_code_id,
            "user_id",
            d.user_id,
            "redeemed_at",
            d.redeemed_at,
        ),
        after=None,
        reason=func.concat(
            "redeemed_at ",
            ledger.utc_text(d.redeemed_at),
            " older than the retention cutoff ",
            ledger.utc_text(cutoff),
        ),
    ).cte("recorded")
    return connection.execute(select(d.id).add_cte(recorded)).all()


def preview_codes(connection: Connection, now: datetime) -> Sequence[Row[uuid.UUID, str]]:
    return connection.execute(
        select(promo_codes.c.id, promo_codes.c.code)
        .where(is_expired_active_code(now))
        .order_by(promo_codes.c.id)
        .limit(LOG_LINE_CAP)
    ).all()


def count_rows(connection: Connection, table: Table, condition: ColumnElement[bool]) -> int:
    return int(
        connection.execute(select(func.count()).select_from(table).where(condition)).scalar_one()
    )


@dataclass(frozen=True)
class Pending:
    """What a run would change now, and what each is taken from."""

    codes: int  # active codes past their valid_until
    active: int  # active codes
    old: int  # redemptions older than the cutoff
    total: int  # redemptions


class PromoCleanupResult(JobResult):
    codes_deactivated: int
    redemptions_deleted: int
    timestamp: str

    def metric_items(self) -> dict[str, float]:
        return {
            "codes_deactivated": self.codes_deactivated,
            "redemptions_deleted": self.redemptions_deleted,
        }


class PromoCleanupDryRun(DryRunResult):
    as_of: str
    would_deactivate: int
    would_delete: int
    timestamp: str


def count_pending(db: AppDatabase, now: datetime, cutoff: datetime) -> Pending:
    with db.transaction() as connection:
        return Pending(
            codes=count_rows(connection, promo_codes, is_expired_active_code(now)),
            active=count_rows(connection, promo_codes, promo_codes.c.is_active.is_(True)),
            old=count_rows(connection, promo_redemptions, is_old_redemption(cutoff)),
            total=count_rows(connection, promo_redemptions, true()),
        )


def changes(config: PromoCleanupConfig, pending: Pending) -> tuple[Change, Change]:
    """The two things a run changes, each with its fixed caps and its learned bound."""
    codes = Change(
        caps_of(config, "deactivate active promo codes", "active codes", CODES_CAP, 100),
        learned_of(config, "codes_deactivated", config.learned_codes_floor, "learned_codes_floor"),
        about_to_change=pending.codes,
        out_of=pending.active,
    )
    redemptions = Change(
        caps_of(config, "delete promo redemptions", "redemptions", REDEMPTIONS_CAP, 1_000),
        learned_of(
            config,
            "redemptions_deleted",
            config.learned_redemptions_floor,
            "learned_redemptions_floor",
        ),
        about_to_change=pending.old,
        out_of=pending.total,
    )
    return codes, redemptions


def caps_of(
    config: PromoCleanupConfig, what: str, of_what: str, max_rows: int, share_floor: int
) -> Caps:
    return Caps(
        job=display_name(JOB_NAME),
        what=what,
        out_of_what=of_what,
        max_rows=max_rows,
        max_rows_setting="fixed",
        max_share=config.max_share,
        max_share_setting="max_share",
        share_applies_above=share_floor,
    )


def learned_of(config: PromoCleanupConfig, metric: str, floor: int, floor_setting: str) -> Learned:
    """The learned bound on one count, from that key of past scheduled runs' results."""
    return Learned(
        result_type=PromoCleanupResult,
        metric=metric,
        k=config.learned_k,
        floor=floor,
        floor_setting=floor_setting,
        window=config.learned_window,
        min_runs=config.learned_min_runs,
    )


def dry_run(
    db: AppDatabase, report: JobReport, now: datetime, cutoff: datetime, pending: Pending
) -> PromoCleanupDryRun:
    with db.transaction() as connection:
        sample = preview_codes(connection, now)
    report.info(f"Would deactivate {pending.codes} expired codes")
    for code_id, code in sample:
        report.row(f"Would deactivate code {code} ({code_id})")
    report.end_rows("codes would be deactivated", total=pending.codes)
    report.info(f"Would delete {pending.old} redemption records older than {iso_utc(cutoff)}")
    return PromoCleanupDryRun(
        as_of=iso_utc(now),
        would_deactivate=pending.codes,
        would_delete=pending.old,
        timestamp=iso_utc(now),
    )


@dg.op(name=OP_NAME, pool=writer_pool(WRITES[0]))
def clean_up_promo_codes(
    context: dg.OpExecutionContext, config: PromoCleanupConfig, db: AppDatabase
) -> dg.Output[ResultJson]:
    """Deactivates active promo codes whose `valid_until` has passed (NULL never
    expires), then deletes redemptions older than the retention (365 days by default).
    Before writing, a run over the fixed caps or over the bounds learned from past
    scheduled runs stops. A dry run may take `as_of`: the codes expired by then, and the
    redemptions older than the retention by then (cutoff = as_of - retention).
    """
    as_of = requested_as_of(config)
    with job_step(context, db, writes=WRITES, dry_run=config.dry_run):
        return clean_up(context, config, db, as_of)


def clean_up(
    context: dg.OpExecutionContext,
    config: PromoCleanupConfig,
    db: AppDatabase,
    as_of: datetime | None,
) -> dg.Output[ResultJson]:
    """`as_of` (dry runs only) stands in for the database's clock in both rules."""
    report = JobReport(context, display_name(JOB_NAME))
    now = as_of if as_of is not None else db.now()
    cutoff = now - timedelta(days=config.redemption_retention_days)
    pending = count_pending(db, now, cutoff)
    for change in changes(config, pending):
        guard_change(
            context, report, change, dry_run=config.dry_run, allow_large=config.allow_large
        )
    if config.dry_run:
        return report.result(dry_run(db, report, now, cutoff, pending))

    run = RunIdentity(run_id=context.run_id, job=JOB_NAME)
    deactivated = 0
    for rows in run_batches(
        db, lambda c: deactivate_codes(c, now, run, limit=config.batch_size), config.batch_size
    ):
        for code_id, code in rows:
            report.row(f"Deactivated code {code} ({code_id})")
        deactivated += len(rows)
    report.end_rows("codes deactivated")
    report.info(f"Deactivated {deactivated} expired codes")

    def delete_batch(connection: Connection) -> Sequence[Row[uuid.UUID]]:
        return delete_redemptions(connection, cutoff, run, limit=config.batch_size)

    deleted = sum(len(batch) for batch in run_batches(db, delete_batch, config.batch_size))
    report.info(f"Deleted {deleted} old redemption records")
    return report.result(
        PromoCleanupResult(
            codes_deactivated=deactivated, redemptions_deleted=deleted, timestamp=iso_utc(now)
        )
    )


@dg.job(
    name=JOB_NAME,
    description="Deactivate expired promo codes and delete old redemptions (Sundays 02:00 UTC).",
    tags=job_tags(JOB_NAME, "low"),
)
def promo_cleanup_job() -> None:
    clean_up_promo_codes()


promo_cleanup_schedule = utc_schedule(promo_cleanup_job, "0 2 * * 0")
