"""discipline-stats-rollup: per-user discipline statistics (daily 01:00 UTC).

Set-based `INSERT ... SELECT ... ON CONFLICT` statements compute every user of the
run's shards inside PostgreSQL, so the job's memory does not grow with the number of
users and there is no round trip per user (a loop over the users, three queries each,
is the benchmark's baseline: docs/benchmark.md).

PostgreSQL plans no parallel workers under an INSERT, so one statement uses one of
the server's cores. The run's shards are therefore split into `parallel_groups`
contiguous groups, each written at the same time on a connection of its own, each in
ONE transaction: a group that fails leaves its shards as they were (the others'
commits stand; a re-run recomputes), and the run fails once every group has ended.

Only what changed is written: a row whose counts equal the computed ones is skipped
(`ON CONFLICT ... DO UPDATE ... WHERE (counts) IS DISTINCT FROM (EXCLUDED's)`): no new
row version, no WAL. So `updated_at` is when the row's counts last changed (or the row
was first written), not when a run last looked at it; the time of the latest run is
its shard's materialization's. `usersUpdated` counts the rows written (new or
changed); `usersComputed` and `shotsCounted` cover every user the run computed.

Users are split into 16 hash shards (the low 4 bits of the id's last byte, which is
random in UUIDv4 and UUIDv7 alike). The shards are the asset's partitions: a run
materializes any set of them in one go, so Dagster records 16 events a day however
many users there are, and operators can still backfill a slice of users from the UI.
A run launched with no partition (the Launchpad with none chosen) covers every shard,
as the schedule's run does.

Each group's statement counts its computed and written rows per shard in SQL, and
each shard gets a materialization of its own with its own counts (one `MaterializeResult`
for a range would stamp the whole run's counts on every shard of the asset's Partitions
plots).
The run's totals, the `Result:` line, are recorded as an observation of the asset.
"""

import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import dagster as dg
from pydantic import Field
from sqlalchemy import (
    CTE,
    ColumnElement,
    Connection,
    Engine,
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

from jobs_pipeline.formats import display_name, first_line, iso_utc
from jobs_pipeline.job_parts.results import (
    DryRunResult,
    JobReport,
    JobResult,
    result_metadata,
)
from jobs_pipeline.job_parts.scheduling import job_tags
from jobs_pipeline.job_parts.writers import job_step, writer_pool
from jobs_pipeline.resources.database import (
    AppDatabase,
    is_connection_loss,
)
from jobs_pipeline.storage.app_tables import (
    Timestamptz,
    aims,
    shots,
    targets,
    user_discipline_stats,
    users,
)
from jobs_pipeline.storage.engine import create_app_engine
from jobs_pipeline.storage.users import find_user
from jobs_pipeline.tags import PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG

JOB_NAME = "discipline_stats_rollup"
ASSET_KEY = dg.AssetKey("user_discipline_stats")
WRITES = ("user_discipline_stats",)
SHARD_COUNT = 16

user_shards = dg.StaticPartitionsDefinition([f"{shard:02d}" for shard in range(SHARD_COUNT)])
ALL_SHARDS_TAGS = {
    PARTITION_RANGE_START_TAG: user_shards.get_partition_keys()[0],
    PARTITION_RANGE_END_TAG: user_shards.get_partition_keys()[-1],
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
        default=256,
        ge=4,
        le=8192,
        description="Memory PostgreSQL may use for the aggregate (per group's connection).",
    )
    parallel_groups: int = Field(
        default=2,
        ge=1,
        le=SHARD_COUNT,
        description=(
            "How many groups of the run's shards are written at the same time, each on a"
            " connection of its own and in one transaction of its own (PostgreSQL runs an"
            " INSERT on one core). 2 measured best on a 2-core database server; on a bigger"
            " server raise it up to the server's cores, within its max_connections budget"
            " (each group holds one connection, besides the run's writer lock, and its own"
            " work_mem). 1 writes every shard in one statement."
        ),
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
    """A run's figures in one shard: that shard's point on the asset's Partitions plots.

    `users_updated` are the rows written (new or changed); `users_computed` and
    `shots_counted` cover every user of the shard, so they mean something on a day when
    nothing changed.
    """

    users_updated: int = 0
    users_computed: int = 0
    shots_counted: int = 0


def already_right(computed: CTE) -> ColumnElement[bool]:
    """The user's stored row holds exactly the computed counts.

    Such rows are left out before the upsert, not only skipped by its `DO UPDATE ...
    WHERE`: ON CONFLICT locks every conflicting row before it evaluates that WHERE, and
    a row lock is WAL too (a full page image per page after a checkpoint), so a day
    when nothing changed would still write WAL for every page. The `DO UPDATE ... WHERE`
    stays for a row another writer changed meanwhile.
    """
    stored = user_discipline_stats.alias("stored")
    return (
        select(stored.c.user_id)
        .where(
            stored.c.user_id == computed.c.user_id,
            tuple_(*(stored.c[name] for name in STAT_COLUMNS)).is_not_distinct_from(
                tuple_(*(computed.c[name] for name in STAT_COLUMNS))
            ),
        )
        .exists()
    )


def upsert_stats(connection: Connection, scope: Scope, now: datetime) -> dict[str, ShardCounts]:
    """Writes the in-scope users' rows that changed in one statement; returns each scope
    shard's counts.

    A row whose counts are already right is neither rewritten nor locked (no new row
    version, no WAL), so `updated_at` moves only when the counts do. The computed and
    the written rows are counted per shard inside the same statement, so per-shard numbers
    cost neither a round trip per user nor the rows' trip to Python. A shard of the scope
    with no users is there too, with zeros.
    """
    computed = computed_stats(scope, now).cte("computed")
    insert = pg_insert(user_discipline_stats).from_select(
        ["user_id", *STAT_COLUMNS, "updated_at"],
        select(computed).where(~already_right(computed)),
    )
    stored = user_discipline_stats.c
    upsert = insert.on_conflict_do_update(
        index_elements=[stored.user_id],
        set_={name: insert.excluded[name] for name in [*STAT_COLUMNS, "updated_at"]},
        where=tuple_(*(stored[name] for name in STAT_COLUMNS)).is_distinct_from(
            tuple_(*(insert.excluded[name] for name in STAT_COLUMNS))
        ),
    ).returning(stored.user_id)
    written = upsert.cte("written")
    computed_shard = user_shard(computed.c.user_id).label("shard")
    per_shard = (
        select(
            computed_shard,
            func.count().label("users"),
            func.coalesce(func.sum(computed.c.total_shots), 0).label("shots"),
        )
        .group_by(computed_shard)
        .subquery("per_shard")
    )
    written_shard = user_shard(written.c.user_id).label("shard")
    written_per_shard = (
        select(written_shard, func.count().label("rows"))
        .group_by(written_shard)
        .subquery("written_per_shard")
    )
    counted = {
        f"{number:02d}": ShardCounts(int(rows), int(users_computed), int(shots))
        for number, users_computed, shots, rows in connection.execute(
            select(
                per_shard.c.shard,
                per_shard.c.users,
                per_shard.c.shots,
                func.coalesce(written_per_shard.c.rows, 0),
            ).select_from(
                per_shard.outerjoin(
                    written_per_shard, written_per_shard.c.shard == per_shard.c.shard
                )
            )
        )
    }
    return {key: counted.get(key, ShardCounts()) for key in scope.shards}


def shard_groups(scope: Scope, parallel_groups: int) -> list[Scope]:
    """The scope split into at most `parallel_groups` contiguous groups of shards, as
    even as can be (16 shards in 3 groups: 6, 5, 5); one user is one group.
    """
    if scope.user_id is not None:
        return [scope]
    count = max(1, min(parallel_groups, len(scope.shards)))
    size, extra = divmod(len(scope.shards), count)
    groups, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        groups.append(Scope(shards=scope.shards[start:end]))
        start = end
    return groups


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
                " triggered). Every user has a row, zeros without targets. A row is rewritten"
                " only when its counts change, so updated_at is when its counts last changed;"
                " the latest run's time is its shard's materialization's. Each shard's"
                " materialization records that shard's usersUpdated (rows new or changed),"
                " usersComputed and shotsCounted (every user of the shard) and the run's scope;"
                " the run's totals (result, seconds) are an observation."
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
    """Recomputes the statistics of every user in the run's shards, writing what changed."""
    with job_step(context.op_execution_context, db, writes=WRITES, dry_run=config.dry_run):
        yield from roll_up(context, config, db)


def roll_up(context: dg.AssetExecutionContext, config: RollupConfig, db: AppDatabase) -> Any:
    report = JobReport(context.op_execution_context, display_name(JOB_NAME))
    scope = resolve_scope(context, config, db)
    now = db.now()
    if config.dry_run:
        would = dry_run(db, report, config, scope, now)
        context.log_event(
            dg.AssetObservation(asset_key=ASSET_KEY, metadata=result_metadata(would.as_json()))
        )
        yield from evaluate_checks(db, scope)
        return
    started = time.monotonic()
    groups = shard_groups(scope, config.parallel_groups)
    per_shard = write_groups(db, config, groups, now, report)
    result = run_totals(per_shard, len(groups), time.monotonic() - started, now)
    report.info(
        f"Computed stats for {result.users_computed} users ({scope.describe()},"
        f" {len(groups)} group{'s' if len(groups) > 1 else ''} at once);"
        f" {result.users_updated} rows new or changed were written"
    )
    report.log_result(result)
    for materialization in shard_materializations(per_shard, scope):
        context.log_event(materialization)
    context.log_event(
        dg.AssetObservation(
            asset_key=ASSET_KEY,
            metadata={
                **result_metadata(result.as_json()),
                "scope": dg.MetadataValue.text(scope.describe()),
            },
        )
    )
    yield from evaluate_checks(db, scope)


class RollupResult(JobResult):
    users_updated: int  # rows written: new or changed
    users_computed: int
    shots_counted: int
    parallel_groups: int
    seconds: float
    timestamp: str

    def metric_items(self) -> dict[str, float]:
        return {
            "rows_written": self.users_updated,
            "users_computed": self.users_computed,
            "shots_counted": self.shots_counted,
        }


class RollupDryRun(DryRunResult):
    would_update: int  # users in scope
    would_change: int  # rows that differ
    timestamp: str


def run_totals(
    per_shard: Mapping[str, ShardCounts], groups: int, seconds: float, now: datetime
) -> RollupResult:
    """The run's result: the operators' `Result:` line and what `launch.result_of` reads."""
    return RollupResult(
        users_updated=sum(counts.users_updated for counts in per_shard.values()),
        users_computed=sum(counts.users_computed for counts in per_shard.values()),
        shots_counted=sum(counts.shots_counted for counts in per_shard.values()),
        parallel_groups=groups,
        seconds=round(seconds, 3),
        timestamp=iso_utc(now),
    )


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
                "usersComputed": dg.MetadataValue.int(counts.users_computed),
                "shotsCounted": dg.MetadataValue.int(counts.shots_counted),
                "scope": dg.MetadataValue.text(scope.describe()),
            },
        )


# A user the app deletes while the statement runs fails its foreign key; the
# statement is taken again on a fresh snapshot, which no longer holds that user.
FOREIGN_KEY_VIOLATION = "23503"
ATTEMPTS_WHILE_USERS_ARE_DELETED = 3


@dataclass(frozen=True)
class GroupOutcome:
    """A group's committed counts, and how often its statement was taken again."""

    counts: dict[str, ShardCounts]
    reruns: int


def upsert_while_users_come_and_go(
    engine: Engine, config: RollupConfig, group: Scope, now: datetime
) -> GroupOutcome:
    """One group's write, one transaction; again on a fresh snapshot if a user went."""
    for attempt in range(1, ATTEMPTS_WHILE_USERS_ARE_DELETED + 1):
        try:
            with engine.begin() as connection:
                prepare_transaction(connection, config)
                return GroupOutcome(upsert_stats(connection, group, now), reruns=attempt - 1)
        except exc.IntegrityError as error:
            deleted_meanwhile = getattr(error.orig, "sqlstate", None) == FOREIGN_KEY_VIOLATION
            if not deleted_meanwhile or attempt == ATTEMPTS_WHILE_USERS_ARE_DELETED:
                raise
    raise AssertionError("unreachable")


def write_group(db: AppDatabase, config: RollupConfig, group: Scope, now: datetime) -> GroupOutcome:
    """A group's write on an engine of its own: the resource's pool is sized for a few
    short transactions, and every group must hold its connection at the same time.
    """
    engine = create_app_engine(
        db.url, statement_timeout_ms=db.statement_timeout_ms, lock_timeout_ms=db.lock_timeout_ms
    )
    try:
        return upsert_while_users_come_and_go(engine, config, group, now)
    finally:
        engine.dispose()


def write_groups(
    db: AppDatabase,
    config: RollupConfig,
    groups: Sequence[Scope],
    now: datetime,
    report: JobReport,
) -> dict[str, ShardCounts]:
    """Writes every group at the same time (threads: this is database work inside one
    step) and waits for all of them; then a failed group fails the run.

    Each group is one transaction, so a failed group wrote nothing and the others'
    commits are whole; a re-run recomputes. A lost connection is raised first when any
    group lost one, so the step is retried rather than failed.
    """
    with ThreadPoolExecutor(len(groups), thread_name_prefix="rollup-group") as pool:
        futures = [pool.submit(write_group, db, config, group, now) for group in groups]
    outcomes = dict(zip((group.describe() for group in groups), futures, strict=True))
    errors = {name: future.exception() for name, future in outcomes.items()}
    failed = {name: error for name, error in errors.items() if error is not None}
    for name, future in outcomes.items():
        if name not in failed and future.result().reruns:
            report.warning(f"A user was deleted while writing {name}; that group ran again")
    if failed:
        raise_group_failure(failed, [name for name in outcomes if name not in failed], report)
    return {shard: counts for future in futures for shard, counts in future.result().counts.items()}


def raise_group_failure(
    failed: Mapping[str, BaseException], committed: Sequence[str], report: JobReport
) -> None:
    """Says which groups wrote nothing and which stand, then raises one group's error."""
    for name, error in failed.items():
        report.error(f"Writing {name} failed, nothing of it was written: {first_line(error)}")
    if committed:
        report.warning(f"Written and kept: {'; '.join(committed)} (a re-run recomputes all)")
    errors = list(failed.values())
    lost = [e for e in errors if isinstance(e, exc.DBAPIError) and is_connection_loss(e)]
    raise (lost or errors)[0]


def dry_run(
    db: AppDatabase, report: JobReport, config: RollupConfig, scope: Scope, now: datetime
) -> RollupDryRun:
    with db.transaction() as connection:
        prepare_transaction(connection, config)
        in_scope, stale = count_stale_rows(connection, scope, now)
    report.info(
        f"Would update stats for {in_scope} users ({scope.describe()}); {stale} rows would change"
    )
    result = RollupDryRun(would_update=in_scope, would_change=stale, timestamp=iso_utc(now))
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
