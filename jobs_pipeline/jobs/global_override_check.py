"""global-override-check: clear an expired global tier override (hourly).

`global_config['global_tier_override']` holds `{"tier": ..., "expires_at": ...}`.
A value of another shape is not trusted: it fails the run and stays as it is for an
admin to fix. The delete removes only the value that was read, not the key by name,
so an override an admin writes in the meantime is kept.
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import dagster as dg
from sqlalchemy import Connection, delete, func, literal, select

from jobs_pipeline.formats import display_name, iso_utc
from jobs_pipeline.job_parts.guard import AsOfConfig, requested_as_of
from jobs_pipeline.job_parts.results import JobReport, JobResult, ResultJson
from jobs_pipeline.job_parts.scheduling import job_tags, utc_schedule
from jobs_pipeline.job_parts.writers import job_step, writer_pool
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.storage import ledger
from jobs_pipeline.storage.app_tables import TIERS, global_config
from jobs_pipeline.storage.ledger import RunIdentity

JOB_NAME = "global_override_check"
OP_NAME = "clear_expired_override"
WRITES = ("global_config",)
OVERRIDE_KEY = "global_tier_override"

# A changed value between read and delete is re-read; an admin rewriting it this
# often is a fault worth reporting, not a reason to loop.
MAX_READS = 3


class MalformedOverride(ValueError):
    """The stored override cannot be read as {"tier": ..., "expires_at": ...}."""


@dataclass(frozen=True)
class Override:
    tier: str
    expires_at_text: str
    expires_at: datetime


def describe(value: Any, limit: int = 80) -> str:
    """A short rendering of a bad value for an error message (values can be huge)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def parse_timestamp(text: str) -> datetime:
    """ISO-8601; an offset is honoured and a time without one is read as UTC."""
    candidate = text.strip()
    if not candidate:
        raise ValueError("empty")
    parsed = datetime.fromisoformat(candidate)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def parse_override(value: Any) -> Override:
    if not isinstance(value, dict):
        raise MalformedOverride(f"the value is not a JSON object: {describe(value)}")
    tier = value.get("tier")
    if tier is None:
        raise MalformedOverride("'tier' is missing")
    if not isinstance(tier, str) or tier not in TIERS:
        raise MalformedOverride(f"'tier' is {describe(tier)}, not one of {', '.join(TIERS)}")
    expires_at = value.get("expires_at")
    if expires_at is None:
        raise MalformedOverride("'expires_at' is missing")
    if not isinstance(expires_at, str):
        raise MalformedOverride(f"'expires_at' is {describe(expires_at)}, not an ISO-8601 string")
    try:
        moment = parse_timestamp(expires_at)
    except ValueError:
        raise MalformedOverride(
            f"'expires_at' is {describe(expires_at)}, not an ISO-8601 timestamp"
        ) from None
    return Override(tier=tier, expires_at_text=expires_at, expires_at=moment)


def read_override(connection: Connection) -> tuple[bool, Any]:
    """(whether the key exists, its stored JSON value)."""
    row = connection.execute(
        select(global_config.c.value).where(global_config.c.key == OVERRIDE_KEY)
    ).first()
    return (False, None) if row is None else (True, row[0])


def delete_if_unchanged(
    connection: Connection, value_read: Any, run: RunIdentity, reason: str
) -> bool:
    """Deletes the override only if it still holds `value_read` (jsonb equality); the
    ledger keeps the whole row, written by the same statement.
    """
    deleted = (
        delete(global_config)
        .where(global_config.c.key == OVERRIDE_KEY, global_config.c.value == value_read)
        .returning(*global_config.c)
        .cte("deleted")
    )
    d = deleted.c
    recorded = ledger.record(
        deleted,
        run,
        table="global_config",
        key=d.key,
        before=func.jsonb_build_object("key", d.key, "value", d.value, "updated_at", d.updated_at),
        after=None,
        reason=literal(reason),
    ).cte("recorded")
    return connection.execute(select(d.key).add_cte(recorded)).first() is not None


class OverrideCheckResult(JobResult):
    """`none`; `active` with `tier`, `expiresAt`; `cleared` (or a dry run's `wouldClear`)
    with `previousTier`, `expiredAt`. A dry run's starts `"dryRun": true, "asOf": ...`.
    """

    dry_run: Literal[True] | None = None
    as_of: str | None = None
    action: Literal["none", "active", "cleared", "wouldClear"]
    tier: str | None = None
    expires_at: str | None = None
    previous_tier: str | None = None
    expired_at: str | None = None

    def metric_items(self) -> dict[str, float]:
        return {"override_cleared": 1.0 if self.action == "cleared" else 0.0}


def check_once(
    db: AppDatabase, report: JobReport, now: datetime, run: RunIdentity, *, dry_run: bool
) -> OverrideCheckResult | None:
    """One read-decide-act pass; None when the value changed under us and must be re-read."""
    with db.transaction() as connection:
        exists, value = read_override(connection)
    if not exists:
        report.info("No override configured")
        return OverrideCheckResult(action="none")
    try:
        override = parse_override(value)
    except MalformedOverride as fault:
        raise dg.Failure(
            description=f"global_config key '{OVERRIDE_KEY}' is malformed: {fault}; left as it is",
            allow_retries=False,
        ) from None

    if override.expires_at >= now:
        report.info(f"Override still active until {override.expires_at_text}")
        return OverrideCheckResult(
            action="active", tier=override.tier, expires_at=override.expires_at_text
        )

    if dry_run:
        report.info(f"Would clear expired override (was: {override.tier})")
        return OverrideCheckResult(
            action="wouldClear", previous_tier=override.tier, expired_at=override.expires_at_text
        )
    with db.transaction() as connection:
        reason = f"expires_at {override.expires_at_text} < run time {iso_utc(now)}"
        if not delete_if_unchanged(connection, value, run, reason):
            report.warning("The override changed after it was read; reading it again")
            return None
    report.info(f"Cleared expired override (was: {override.tier})")
    return OverrideCheckResult(
        action="cleared", previous_tier=override.tier, expired_at=override.expires_at_text
    )


@dg.op(name=OP_NAME, pool=writer_pool(WRITES[0]))
def clear_expired_override(
    context: dg.OpExecutionContext, config: AsOfConfig, db: AppDatabase
) -> dg.Output[ResultJson]:
    """Deletes the global tier override once its `expires_at` has passed.

    No override: `{"action": "none"}`; still valid: `{"action": "active", ...}`;
    expired: deleted, `{"action": "cleared", ...}`. A value that is not
    `{"tier": free|premium|pro, "expires_at": ISO-8601}` fails the run and is kept.
    A dry run may take `as_of`: whether the override would be expired then.
    """
    as_of = requested_as_of(config)
    with job_step(context, db, writes=WRITES, dry_run=config.dry_run):
        return check_override(context, config, db, as_of)


def check_override(
    context: dg.OpExecutionContext,
    config: AsOfConfig,
    db: AppDatabase,
    as_of: datetime | None,
) -> dg.Output[ResultJson]:
    """`as_of` (dry runs only) stands in for the database's clock in the rule."""
    report = JobReport(context, display_name(JOB_NAME))
    now = as_of if as_of is not None else db.now()
    run = RunIdentity(run_id=context.run_id, job=JOB_NAME)
    for _attempt in range(MAX_READS):
        result = check_once(db, report, now, run, dry_run=config.dry_run)
        if result is not None:
            if config.dry_run:
                # A dry run says so, and at what time, even where there was nothing to clear.
                result = result.model_copy(update={"dry_run": True, "as_of": iso_utc(now)})
            return report.result(result)
    raise dg.Failure(
        description=(
            f"global_config key '{OVERRIDE_KEY}' changed {MAX_READS} times while it was checked;"
            " the next run checks it again"
        )
    )


@dg.job(
    name=JOB_NAME,
    description="Clear an expired global tier override (hourly).",
    tags=job_tags(JOB_NAME, "medium"),
)
def global_override_check_job() -> None:
    clear_expired_override()


global_override_check_schedule = utc_schedule(global_override_check_job, "0 * * * *")
