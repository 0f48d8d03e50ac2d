"""discipline-stats-rollup: per-user discipline statistics (daily 01:00 UTC).

The original design looped over every user with three queries each; here one
set-based `INSERT ... SELECT ... ON CONFLICT` statement per run computes every
user of the run's shards inside PostgreSQL, so the job's memory does not grow with
the number of users and there is no round trip per user.

Users are split into 16 hash shards (the low 4 bits of the id's last byte, which is
random in UUIDv4 and UUIDv7 alike). The shards are the asset's partitions: a run
materializes any set of them in one go, so Dagster records 16 events a day however
many users there are, and operators can still backfill a slice of users from the UI.
A run launched with no partition (the Launchpad with none chosen) covers every shard,
as the schedule's run does.

The one statement's written rows are counted per shard in SQL, and each shard gets a
materialization of its own with its own counts (one `MaterializeResult` for a range
would stamp the whole run's counts on every shard of the asset's Partitions plots).
The run's totals, the `Result:` line, are recorded as an observation of the asset.
"""

import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import dagster as dg
from pydantic import Field
from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    cast,
    exc,
    func,
    literal,
    or_,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs_pipeline.app_tables import Timestamptz, aims, shots, targets, user_discipline_stats, users
from jobs_pipeline.database import AppDatabase
from jobs_pipeline.jobs.reporting import (
    JobReport,
    JobResult,
    iso_utc,
    result_metadata,
    seed_name,
)
from jobs_pipeline.jobs.scheduling import job_tags
from jobs_pipeline.jobs.writers import job_step, writer_pool

JOB_NAME = "discipline_stats_rollup"
ASSET_KEY = dg.AssetKey("user_discipline_stats")
WRITES = ("user_discipline_stats",)
SHARD_COUNT = 16

user_shards = dg.StaticPartitionsDefinition([f"{shard:02d}" for shard in range(SHARD_COUNT)])
ALL_SHARDS_TAGS = {
    "dagster/asset_partition_range_start": user_shards.get_partition_keys()[0],
    "dagster/asset_partition_range_end": user_shards.get_partition_keys()[-1],
}

STAT_COLUMNS = (
    "total_shots",
    "stop_loss_honored_count",
    "stop_loss_ignored_count",
    "profit_target_honored_count",
    "profit_target_ignored_count",
    "abort_trigger_honored_count",
    "abort_trigger_ignored_count",
)


class RollupConfig(dg.Config):
    dry_run: bool = False
    user: str | None = Field(
        default=None, description="Refresh only this user (id or email), for support."
    )
    statement_timeout_minutes: int = Field(
        default=30, ge=1, le=24 * 60, description="The rollup statement's own time limit."
    )
    work_mem_mb: int = Field(
        default=256, ge=4, le=8192, description="Memory PostgreSQL may use for the aggregate."
    )


def shard_of(user_id: uuid.UUID) -> str:
    """The partition key of a user's shard; `user_shard` below computes the same in SQL."""
    return f"{user_id.bytes[15] % SHARD_COUNT:02d}"


def user_shard(user_id: ColumnElement[uuid.UUID]) -> ColumnElement[int]:
    return func.get_byte(func.uuid_send(user_id), 15).op("%")(SHARD_COUNT)


@dataclass(frozen=True)
class Scope:
    """Which users a run covers: some shards, or one user (who lies in one shard)."""

    shards: tuple[str, ...]
    user_id: uuid.UUID | None = None

    def describe(self) -> str:
        if self.user_id is not None:
            return f"user {self.user_id}"
        if len(self.shards) == SHARD_COUNT:
            return f"all {SHARD_COUNT} shards"
        return f"shards {', '.join(self.shards)}"

    def covers(self, user_id: ColumnElement[uuid.UUID]) -> ColumnElement[bool]:
        if self.user_id is not None:
            return user_id == self.user_id
        if len(self.shards) == SHARD_COUNT:
            return literal(True)
        return user_shard(user_id).in_([int(shard) for shard in self.shards])


def computed_stats(scope: Scope, now: datetime) -> Select[Any]:
    """Every in-scope user's statistics, zeros for a user with no targets or shots."""
    per_user_shots = (
        select(
            targets.c.user_id,
            func.count().label("total_shots"),
            func.count().filter(shots.c.stop_loss_honored.is_(True)).label("sl_honored"),
            func.count().filter(shots.c.stop_loss_honored.is_(False)).label("sl_ignored"),
            func.count().filter(shots.c.profit_target_honored.is_(True)).label("pt_honored"),
            func.count().filter(shots.c.profit_target_honored.is_(False)).label("pt_ignored"),
        )
        .select_from(
            shots.join(aims, aims.c.id == shots.c.aim_id).join(
                targets, targets.c.id == aims.c.target_id
            )
        )
        .where(scope.covers(targets.c.user_id))
        .group_by(targets.c.user_id)
        .subquery("per_user_shots")
    )
    per_user_targets = (
        select(
            targets.c.user_id,
            func.count().filter(targets.c.abort_triggered.is_(True)).label("abort_honored"),
            func.count()
            .filter(targets.c.abort_trigger.is_not(None), targets.c.abort_triggered.is_(False))
            .label("abort_ignored"),
        )
        .where(scope.covers(targets.c.user_id))
        .group_by(targets.c.user_id)
        .subquery("per_user_targets")
    )
    s, t = per_user_shots.c, per_user_targets.c
    return (
        select(
            users.c.id.label("user_id"),
            func.coalesce(s.total_shots, 0).label("total_shots"),
            func.coalesce(s.sl_honored, 0).label("stop_loss_honored_count"),
            func.coalesce(s.sl_ignored, 0).label("stop_loss_ignored_count"),
            func.coalesce(s.pt_honored, 0).label("profit_target_honored_count"),
            func.coalesce(s.pt_ignored, 0).label("profit_target_ignored_count"),
            func.coalesce(t.abort_honored, 0).label("abort_trigger_honored_count"),
            func.coalesce(t.abort_ignored, 0).label("abort_trigger_ignored_count"),
            cast(literal(now), Timestamptz).label("updated_at"),
        )
        .select_from(
            users.outerjoin(per_user_shots, s.user_id == users.c.id).outerjoin(
                per_user_targets, t.user_id == users.c.id
            )
        )
        .where(scope.covers(users.c.id))
    )


@dataclass(frozen=True)
class ShardCounts:
    """What a run wrote in one shard: that shard's point on the asset's Partitions plots."""

    users_updated: int = 0
    shots_counted: int = 0


def upsert_stats(connection: Connection, scope: Scope, now: datetime) -> dict[str, ShardCounts]:
    """Writes every in-scope user's row in one statement; returns each scope shard's counts.

    The written rows are counted per shard inside the same statement, so per-shard
    numbers cost neither a round trip per user nor the rows' trip to Python. A shard
    of the scope with no users is there too, with zeros.
    """
    columns = ["user_id", *STAT_COLUMNS, "updated_at"]
    insert = pg_insert(user_discipline_stats).from_select(columns, computed_stats(scope, now))
    upsert = insert.on_conflict_do_update(
        index_elements=[user_discipline_stats.c.user_id],
        set_={name: insert.excluded[name] for name in [*STAT_COLUMNS, "updated_at"]},
    ).returning(user_discipline_stats.c.user_id, user_discipline_stats.c.total_shots)
    written = upsert.cte("written")
    shard = user_shard(written.c.user_id).label("shard")
    per_shard = select(
        shard, func.count(), func.coalesce(func.sum(written.c.total_shots), 0)
    ).group_by(shard)
    counted = {
        f"{number:02d}": ShardCounts(int(users_updated), int(shots_counted))
        for number, users_updated, shots_counted in connection.execute(per_shard)
    }
    return {key: counted.get(key, ShardCounts()) for key in scope.shards}


def count_stale_rows(connection: Connection, scope: Scope, now: datetime) -> tuple[int, int]:
    """(users in scope, of them those whose stored row is missing or differs): the dry run."""
    computed = computed_stats(scope, now).subquery("computed")
    stored = user_discipline_stats
    differs = or_(
        stored.c.user_id.is_(None),
        tuple_(*(stored.c[name] for name in STAT_COLUMNS)).is_distinct_from(
            tuple_(*(computed.c[name] for name in STAT_COLUMNS))
        ),
    )
    in_scope, stale = connection.execute(
        select(func.count(), func.count().filter(differs)).select_from(
            computed.outerjoin(stored, stored.c.user_id == computed.c.user_id)
        )
    ).one()
    return int(in_scope), int(stale)


# -- asset checks: run in the same step, over the run's scope ---------------------------------


def pairs_over_total(connection: Connection, scope: Scope) -> int:
    s = user_discipline_stats.c
    return int(
        connection.execute(
            select(func.count())
            .select_from(user_discipline_stats)
            .where(
                scope.covers(s.user_id),
                or_(
                    s.stop_loss_honored_count + s.stop_loss_ignored_count > s.total_shots,
                    s.profit_target_honored_count + s.profit_target_ignored_count > s.total_shots,
                ),
            )
        ).scalar_one()
    )


def aborts_over_targets(connection: Connection, scope: Scope) -> int:
    per_user = (
        select(targets.c.user_id, func.count().label("targets"))
        .where(scope.covers(targets.c.user_id))
        .group_by(targets.c.user_id)
        .subquery()
    )
    s = user_discipline_stats.c
    return int(
        connection.execute(
            select(func.count())
            .select_from(user_discipline_stats.outerjoin(per_user, per_user.c.user_id == s.user_id))
            .where(
                scope.covers(s.user_id),
                s.abort_trigger_honored_count + s.abort_trigger_ignored_count
                > func.coalesce(per_user.c.targets, 0),
            )
        ).scalar_one()
    )


def users_without_row(connection: Connection, scope: Scope) -> int:
    return int(
        connection.execute(
            select(func.count())
            .select_from(
                users.outerjoin(
                    user_discipline_stats, user_discipline_stats.c.user_id == users.c.id
                )
            )
            .where(scope.covers(users.c.id), user_discipline_stats.c.user_id.is_(None))
        ).scalar_one()
    )


CHECKS: dict[str, tuple[str, Any]] = {
    "honored_plus_ignored_within_total": (
        "For every user, stop-loss and profit-target honored + ignored never exceed total shots.",
        pairs_over_total,
    ),
    "abort_counts_within_targets": (
        "For every user, abort-trigger honored + ignored never exceed the user's targets.",
        aborts_over_targets,
    ),
    "every_user_has_a_row": (
        "After a run, every user of its shards has a statistics row.",
        users_without_row,
    ),
}


def evaluate_checks(db: AppDatabase, scope: Scope) -> list[dg.AssetCheckResult]:
    with db.transaction() as connection:
        failures = {name: check(connection, scope) for name, (_doc, check) in CHECKS.items()}
    return [
        dg.AssetCheckResult(
            asset_key=ASSET_KEY,
            check_name=name,
            passed=count == 0,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"offending_users": count, "shards": ", ".join(scope.shards)},
        )
        for name, count in failures.items()
    ]


def find_user(connection: Connection, id_or_email: str) -> uuid.UUID:
    """The id of the user named by id or email; a clear error when there is none."""
    needle = id_or_email.strip()
    try:
        condition = users.c.id == uuid.UUID(needle)
    except ValueError:
        condition = func.lower(users.c.email) == needle.lower()
    found = connection.execute(select(users.c.id).where(condition).limit(2)).scalars().all()
    if len(found) != 1:
        raise LookupError(f"no user with id or email {needle!r}")
    return found[0]


def prepare_transaction(connection: Connection, config: RollupConfig) -> None:
    """A bigger time limit and aggregate memory for this one transaction only."""
    connection.execute(
        select(
            func.set_config("statement_timeout", f"{config.statement_timeout_minutes}min", True),
            func.set_config("work_mem", f"{config.work_mem_mb}MB", True),
        )
    )


def run_shards(context: dg.AssetExecutionContext) -> tuple[str, ...]:
    """The shards the run covers: those it was launched for, else every one.

    A run launched with no partition (the Launchpad with none chosen) has no partition
    keys at all; it recomputes every shard, as the schedule's run over all of them does.
    """
    if context.has_partition_key or context.has_partition_key_range:
        return tuple(context.partition_keys)
    return tuple(user_shards.get_partition_keys())


def resolve_scope(
    context: dg.AssetExecutionContext, config: RollupConfig, db: AppDatabase
) -> Scope:
    shards = run_shards(context)
    if config.user is None:
        return Scope(shards=shards)
    with db.transaction() as connection:
        try:
            user_id = find_user(connection, config.user)
        except LookupError as missing:
            raise dg.Failure(description=str(missing), allow_retries=False) from None
    if shard_of(user_id) not in shards:
        raise dg.Failure(
            description=(
                f"user {user_id} is in shard {shard_of(user_id)}, not in this run's shards"
                f" ({', '.join(shards)}): launch the run for that shard"
            ),
            allow_retries=False,
        )
    return Scope(shards=(shard_of(user_id),), user_id=user_id)


@dg.multi_asset(
    name="user_discipline_stats",
    specs=[
        dg.AssetSpec(
            ASSET_KEY,
            description=(
                "Per-user discipline statistics: shots through aims to the user's targets,"
                " stop-loss and profit-target honored/ignored (NULL counts in the total only),"
                " abort triggers honored (abort_triggered) and ignored (a trigger set, not"
                " triggered). Every user has a row, zeros without targets. Each shard's"
                " materialization records that shard's usersUpdated and shotsCounted (and the"
                " run's scope); the run's totals (result, seconds) are an observation."
            ),
            partitions_def=user_shards,
            # The output is never yielded: a run records each shard's materialization
            # itself, with that shard's counts; a dry run records none.
            skippable=True,
            group_name="discipline",
            kinds={"postgres"},
        )
    ],
    check_specs=[
        dg.AssetCheckSpec(name, asset=ASSET_KEY, description=doc)
        for name, (doc, _check) in CHECKS.items()
    ],
    partitions_def=user_shards,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=writer_pool(WRITES[0]),
)
def user_discipline_stats_asset(
    context: dg.AssetExecutionContext, config: RollupConfig, db: AppDatabase
) -> Any:
    """Recomputes the statistics of every user in the run's shards in one statement."""
    with job_step(context.op_execution_context, db, writes=WRITES, dry_run=config.dry_run):
        yield from roll_up(context, config, db)


def roll_up(context: dg.AssetExecutionContext, config: RollupConfig, db: AppDatabase) -> Any:
    report = JobReport(context.op_execution_context, seed_name(JOB_NAME))
    scope = resolve_scope(context, config, db)
    now = db.now()
    if config.dry_run:
        result = dry_run(db, report, config, scope, now)
        context.log_event(
            dg.AssetObservation(asset_key=ASSET_KEY, metadata=result_metadata(result))
        )
        yield from evaluate_checks(db, scope)
        return
    started = time.monotonic()
    per_shard = upsert_while_users_come_and_go(db, config, scope, now, report)
    result = run_totals(per_shard, time.monotonic() - started, now)
    report.info(f"Updated stats for {result['usersUpdated']} users ({scope.describe()})")
    report.log_result(result)
    for materialization in shard_materializations(per_shard, scope):
        context.log_event(materialization)
    context.log_event(
        dg.AssetObservation(
            asset_key=ASSET_KEY,
            metadata={**result_metadata(result), "scope": dg.MetadataValue.text(scope.describe())},
        )
    )
    yield from evaluate_checks(db, scope)


def run_totals(per_shard: Mapping[str, ShardCounts], seconds: float, now: datetime) -> JobResult:
    """The run's result: the operators' `Result:` line and what `launch.result_of` reads."""
    return {
        "usersUpdated": sum(counts.users_updated for counts in per_shard.values()),
        "shotsCounted": sum(counts.shots_counted for counts in per_shard.values()),
        "seconds": round(seconds, 3),
        "timestamp": iso_utc(now),
    }


def shard_materializations(
    per_shard: Mapping[str, ShardCounts], scope: Scope
) -> Iterator[dg.AssetMaterialization]:
    """One per shard with that shard's own counts, so the asset's Partitions plots show
    each shard's numbers; at most 16 events whatever the number of users. They carry no
    `result` entry: the run's totals are the observation's, which `launch.result_of` reads.
    """
    for shard, counts in per_shard.items():
        yield dg.AssetMaterialization(
            asset_key=ASSET_KEY,
            partition=shard,
            metadata={
                "usersUpdated": dg.MetadataValue.int(counts.users_updated),
                "shotsCounted": dg.MetadataValue.int(counts.shots_counted),
                "scope": dg.MetadataValue.text(scope.describe()),
            },
        )


# A user the app deletes while the statement runs fails its foreign key; the
# statement is taken again on a fresh snapshot, which no longer holds that user.
FOREIGN_KEY_VIOLATION = "23503"
ATTEMPTS_WHILE_USERS_ARE_DELETED = 3


def upsert_while_users_come_and_go(
    db: AppDatabase, config: RollupConfig, scope: Scope, now: datetime, report: JobReport
) -> dict[str, ShardCounts]:
    for attempt in range(1, ATTEMPTS_WHILE_USERS_ARE_DELETED + 1):
        try:
            with db.transaction() as connection:
                prepare_transaction(connection, config)
                return upsert_stats(connection, scope, now)
        except exc.IntegrityError as error:
            deleted_meanwhile = getattr(error.orig, "sqlstate", None) == FOREIGN_KEY_VIOLATION
            if not deleted_meanwhile or attempt == ATTEMPTS_WHILE_USERS_ARE_DELETED:
                raise
            report.warning("A user was deleted while their stats were written; running again")
    raise AssertionError("unreachable")


def dry_run(
    db: AppDatabase, report: JobReport, config: RollupConfig, scope: Scope, now: datetime
) -> JobResult:
    with db.transaction() as connection:
        prepare_transaction(connection, config)
        in_scope, stale = count_stale_rows(connection, scope, now)
    report.info(
        f"Would update stats for {in_scope} users ({scope.describe()}); {stale} rows would change"
    )
    result = {
        "dryRun": True,
        "wouldUpdate": in_scope,
        "wouldChange": stale,
        "timestamp": iso_utc(now),
    }
    report.log_result(result)
    return result


discipline_stats_rollup_job = dg.define_asset_job(
    JOB_NAME,
    selection=[ASSET_KEY],
    description="Per-user discipline statistics, all shards in one run (daily 01:00 UTC).",
    tags=job_tags(JOB_NAME, "medium"),
)


@dg.schedule(
    name=f"{JOB_NAME}_schedule",
    job=discipline_stats_rollup_job,
    cron_schedule="0 1 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def discipline_stats_rollup_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Every shard in one run (a range of partitions, one run, one statement)."""
    return dg.RunRequest(tags=ALL_SHARDS_TAGS)


# Freshness as an asset check run by a sensor: superseded in 1.12 by FreshnessPolicy,
# which is still a preview behind a `freshness: enabled` flag in dagster.yaml and
# cannot be evaluated in a test. The check is stable, testable and shown in the UI.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.SupersessionWarning)
    user_discipline_stats_freshness_checks = dg.build_last_update_freshness_checks(
        assets=[ASSET_KEY], lower_bound_delta=timedelta(hours=26)
    )
    user_discipline_stats_freshness_sensor = dg.build_sensor_for_freshness_checks(
        freshness_checks=user_discipline_stats_freshness_checks,
        name="user_discipline_stats_freshness_sensor",
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
