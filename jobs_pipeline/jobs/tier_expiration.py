"""tier-expiration: downgrade users whose paid tier has expired (daily 00:15 UTC).

The rule is checked by the statement that changes the row, so a user who renews
between the count and the update is not downgraded (selecting the expired users
first and then updating each by id would). Rows are taken in bounded batches (one
short transaction each), and rows the app holds locked are skipped (`SKIP LOCKED`)
and left for the next run instead of stalling this one.
"""

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import dagster as dg
from pydantic import Field
from sqlalchemy import (
    CTE,
    ColumnElement,
    Connection,
    Row,
    and_,
    cast,
    exc,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs_pipeline.formats import display_name, first_line, iso_utc
from jobs_pipeline.job_parts.batching import locked_batch
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
from jobs_pipeline.job_parts.writers import job_step, require_project_schema, writer_pool
from jobs_pipeline.resources.database import AppDatabase, is_connection_loss
from jobs_pipeline.storage import ledger
from jobs_pipeline.storage.app_tables import Timestamptz, users
from jobs_pipeline.storage.ledger import RunIdentity
from jobs_pipeline.storage.project_tables import email_outbox

JOB_NAME = "tier_expiration"
OP_NAME = "downgrade_expired_tiers"
WRITES = ("users",)
# The share cap means little for a handful: it applies once a run would change more.
SHARE_APPLIES_ABOVE = 100


class TierExpirationConfig(AsOfConfig, LearnedGuardConfig):
    batch_size: int = Field(
        default=5_000, ge=1, le=100_000, description="Users downgraded per transaction."
    )
    max_downgrades: int = Field(
        default=10_000, ge=1, description="A run that would downgrade more stops first."
    )
    max_downgrade_share: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="A run that would downgrade more than this share of paying users stops first.",
    )
    learned_floor: int = Field(
        default=50, ge=0, description="The learned bound is never below this many downgrades."
    )


def has_expired_paid_tier(now: datetime) -> ColumnElement[bool]:
    """The business rule: a paid tier whose expiry time has passed."""
    return and_(
        users.c.tier_expires_at.is_not(None),
        users.c.tier_expires_at < now,
        users.c.tier != "free",
    )


def downgrade(
    connection: Connection,
    now: datetime,
    run: RunIdentity,
    *,
    limit: int,
    after_id: uuid.UUID | None = None,
    only_id: uuid.UUID | None = None,
) -> Sequence[Row[uuid.UUID, str]]:
    """Downgrades the next `limit` unlocked expired users after `after_id`, in id order.

    Returns (id, tier before) of each, sorted by id. Locking the rows and
    re-checking the rule in one statement means a renewal committed at any moment
    either came first (the row no longer matches) or waits for this short
    transaction; a row the app holds locked is skipped, not waited for. The same
    statement queues each user's `tier-expired` email, so there is never a
    downgrade without its email, nor an email without its downgrade.
    """
    condition = has_expired_paid_tier(now)
    if after_id is not None:
        condition = and_(condition, users.c.id > after_id)
    if only_id is not None:
        condition = and_(condition, users.c.id == only_id)
    locked = locked_batch(
        [
            users.c.id,
            users.c.tier,
            users.c.tier_source,
            users.c.tier_expires_at,
            users.c.updated_at,
        ],
        condition,
        order_by=users.c.id,
        limit=limit,
    )
    downgraded = (
        update(users)
        .where(users.c.id == locked.c.id, has_expired_paid_tier(now))
        .values(tier="free", tier_source="default", tier_expires_at=None, updated_at=now)
        .returning(
            users.c.id,
            users.c.email,
            locked.c.tier,
            locked.c.tier_source,
            locked.c.tier_expires_at,
            locked.c.updated_at,
        )
        .cte("downgraded")
    )
    queued = queue_tier_expired_emails(downgraded).cte("queued")
    recorded = record_downgrades(downgraded, run, now).cte("recorded")
    statement = select(downgraded.c.id, downgraded.c.tier).add_cte(queued, recorded)
    return sorted(connection.execute(statement).all(), key=lambda row: row[0])


def record_downgrades(downgraded: CTE, run: RunIdentity, now: datetime) -> Any:
    """The ledger's rows for a batch of downgrades: the four columns, before and after."""
    d = downgraded.c
    return ledger.record(
        downgraded,
        run,
        table="users",
        key=d.id,
        before=func.jsonb_build_object(
            "tier",
            d.tier,
            "tier_source",
            d.tier_source,
            "tier_expires_at",
            d.tier_expires_at,
            "updated_at",
            d.updated_at,
        ),
        after=func.jsonb_build_object(
            "tier",
            "free",
            "tier_source",
            "default",
            "tier_expires_at",
            None,
            "updated_at",
            cast(literal(now), Timestamptz),
        ),
        reason=func.concat(
            "tier_expires_at ",
            ledger.utc_text(d.tier_expires_at),
            " < run time ",
            ledger.utc_text(now),
        ),
    )


def queue_tier_expired_emails(downgraded: CTE) -> Any:
    """One `tier-expired` email per downgrade; its key (user, expiry) makes it once only."""
    expired_at = func.to_char(
        func.timezone("UTC", downgraded.c.tier_expires_at), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'
    )
    emails = select(
        downgraded.c.email,
        downgraded.c.id,
        literal("tier-expired"),
        func.concat("tier-expired:", downgraded.c.id, ":", expired_at),
        func.jsonb_build_object("previous_tier", downgraded.c.tier, "expired_at", expired_at),
    )
    return (
        pg_insert(email_outbox)
        .from_select(["recipient", "user_id", "template", "dedupe_key", "payload"], emails)
        .on_conflict_do_nothing(index_elements=[email_outbox.c.dedupe_key])
    )


def expired_users(
    connection: Connection, now: datetime, *, limit: int, after_id: uuid.UUID | None = None
) -> Sequence[Row[uuid.UUID, str]]:
    """(id, tier) of expired users in id order, without locking them."""
    window = select(users.c.id, users.c.tier).where(has_expired_paid_tier(now))
    if after_id is not None:
        window = window.where(users.c.id > after_id)
    return connection.execute(window.order_by(users.c.id).limit(limit)).all()


def count_paying(connection: Connection) -> int:
    statement = select(func.count()).select_from(users).where(users.c.tier != "free")
    return int(connection.execute(statement).scalar_one())


def count_expired(connection: Connection, now: datetime) -> int:
    statement = select(func.count()).select_from(users).where(has_expired_paid_tier(now))
    return int(connection.execute(statement).scalar_one())


class Downgrader:
    """Walks the expired users in id order, batch by batch, one transaction per batch.

    When a batch statement fails (a row the app's own rules reject, say), that
    batch is retried user by user, so one bad row is logged and the rest go on.
    The per-user path runs only for a failed batch, never in the common case.
    """

    def __init__(
        self,
        db: AppDatabase,
        report: JobReport,
        now: datetime,
        batch_size: int,
        run: RunIdentity,
    ):
        self.db, self.report, self.now, self.batch_size = db, report, now, batch_size
        self.identity = run
        self.processed = 0
        self.failed = 0
        self.first_failure = ""

    def run(self) -> None:
        after_id: uuid.UUID | None = None
        while True:
            try:
                with self.db.transaction() as connection:
                    rows = downgrade(
                        connection,
                        self.now,
                        self.identity,
                        limit=self.batch_size,
                        after_id=after_id,
                    )
            except exc.DBAPIError as error:
                if is_connection_loss(error):
                    raise
                after_id = self.run_window_user_by_user(after_id, error)
                if after_id is None:
                    return
                continue
            if not rows:
                return
            self.record(rows)
            after_id = rows[-1][0]

    def run_window_user_by_user(
        self, after_id: uuid.UUID | None, batch_error: exc.DBAPIError
    ) -> uuid.UUID | None:
        """Returns the last id of the window it went through, or None when none was left."""
        self.report.warning(f"A batch failed ({first_line(batch_error)}); retrying it user by user")
        with self.db.transaction() as connection:
            window = expired_users(connection, self.now, limit=self.batch_size, after_id=after_id)
        for user_id, _tier in window:
            try:
                with self.db.transaction() as connection:
                    rows = downgrade(connection, self.now, self.identity, limit=1, only_id=user_id)
            except exc.DBAPIError as error:
                if is_connection_loss(error):
                    raise
                self.failed += 1
                self.first_failure = self.first_failure or first_line(error)
                self.report.error(f"Failed to downgrade user {user_id}: {first_line(error)}")
                continue
            self.record(rows)
        return window[-1][0] if window else None

    def record(self, rows: Sequence[Row[uuid.UUID, str]]) -> None:
        for user_id, previous_tier in rows:
            self.report.row(f"Downgraded user {user_id} from {previous_tier} to free")
        self.processed += len(rows)


@dg.op(name=OP_NAME, pool=writer_pool(WRITES[0]))
def downgrade_expired_tiers(
    context: dg.OpExecutionContext, config: TierExpirationConfig, db: AppDatabase
) -> dg.Output[ResultJson]:
    """Downgrades to Free every user whose paid tier expired before the run started.

    Rule: `tier <> 'free'` and `tier_expires_at < now` become `tier = 'free'`,
    `tier_source = 'default'`, `tier_expires_at = NULL`. Rows the app holds locked
    are skipped and taken by the next run; one user's failure does not stop the
    others, but the run fails when every update failed. Before writing, a run over the
    fixed caps or over the bound learned from past scheduled runs stops. A dry run may
    take `as_of`: the rule is evaluated as if the run happened then.
    """
    as_of = requested_as_of(config)
    with job_step(context, db, writes=WRITES, dry_run=config.dry_run):
        return expire_tiers(context, config, db, as_of)


class TierExpirationResult(JobResult):
    processed: int  # downgraded
    failed: int
    skipped: int  # rows the app held locked: the next run takes them
    timestamp: str

    def metric_items(self) -> dict[str, float]:
        return {
            "users_downgraded": self.processed,
            "users_failed": self.failed,
            "users_skipped": self.skipped,
        }


class TierExpirationDryRun(DryRunResult):
    as_of: str
    would_process: int
    timestamp: str


class AllUpdatesFailed(Exception):
    """Every user update failed: the run is retried, then fails (and so alerts)."""


def caps_of(config: TierExpirationConfig) -> Caps:
    return Caps(
        job=display_name(JOB_NAME),
        what="downgrade paying users",
        out_of_what="paying users",
        max_rows=config.max_downgrades,
        max_rows_setting="max_downgrades",
        max_share=config.max_downgrade_share,
        max_share_setting="max_downgrade_share",
        share_applies_above=SHARE_APPLIES_ABOVE,
    )


def learned_of(config: TierExpirationConfig) -> Learned:
    """The learned bound on downgrades, from the `processed` count of past scheduled runs."""
    return Learned(
        result_type=TierExpirationResult,
        metric="processed",
        k=config.learned_k,
        floor=config.learned_floor,
        floor_setting="learned_floor",
        window=config.learned_window,
        min_runs=config.learned_min_runs,
    )


def expire_tiers(
    context: dg.OpExecutionContext,
    config: TierExpirationConfig,
    db: AppDatabase,
    as_of: datetime | None,
) -> dg.Output[ResultJson]:
    """`as_of` (dry runs only) stands in for the database's clock in the rule."""
    report = JobReport(context, display_name(JOB_NAME))
    now = as_of if as_of is not None else db.now()
    with db.transaction() as connection:
        if not config.dry_run:
            require_project_schema(connection)  # the downgrade queues an email there
        found = count_expired(connection, now)
        paying = count_paying(connection)
    report.info(f"Found {found} users with expired tiers")
    change = Change(caps_of(config), learned_of(config), about_to_change=found, out_of=paying)
    guard_change(context, report, change, dry_run=config.dry_run, allow_large=config.allow_large)

    if config.dry_run:
        with db.transaction() as connection:
            sample = expired_users(connection, now, limit=LOG_LINE_CAP)
        for user_id, tier in sample:
            report.row(f"Would downgrade user {user_id} from {tier} to free")
        report.end_rows("users would be downgraded", total=found)
        return report.result(
            TierExpirationDryRun(as_of=iso_utc(now), would_process=found, timestamp=iso_utc(now))
        )

    run = RunIdentity(run_id=context.run_id, job=JOB_NAME)
    downgrader = Downgrader(db, report, now, config.batch_size, run)
    downgrader.run()
    report.end_rows("users downgraded")
    with db.transaction() as connection:
        left = count_expired(connection, now)
    skipped = max(left - downgrader.failed, 0)
    if skipped:
        report.warning(
            f"Skipped {skipped} users whose rows the app held locked; the next run takes them"
        )
    result = TierExpirationResult(
        processed=downgrader.processed,
        failed=downgrader.failed,
        skipped=skipped,
        timestamp=iso_utc(now),
    )
    if downgrader.failed and not downgrader.processed:
        report.log_result(result)
        # Every update failed: the run is retried, then fails, and so alerts.
        raise db.retry_request() from AllUpdatesFailed(
            f"[{report.name}] All {downgrader.failed} user updates failed;"
            f" first error: {downgrader.first_failure}"
        )
    return report.result(result)


@dg.job(
    name=JOB_NAME,
    description="Downgrade users whose paid tier has expired (daily 00:15 UTC).",
    tags=job_tags(JOB_NAME, "high"),
)
def tier_expiration_job() -> None:
    downgrade_expired_tiers()


tier_expiration_schedule = utc_schedule(tier_expiration_job, "15 0 * * *")
