"""The rollup as Dagster runs it: the asset `user_discipline_stats` over its user
shards, its job, its schedule, and what a run records (a materialization per shard, the
run's totals as an observation, the checks' results).
"""

import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import dagster as dg

from jobs_pipeline.formats import display_name, iso_utc
from jobs_pipeline.job_parts.results import (
    DryRunResult,
    JobReport,
    JobResult,
    result_metadata,
)
from jobs_pipeline.job_parts.scheduling import job_tags
from jobs_pipeline.job_parts.writers import job_step, writer_pool
from jobs_pipeline.jobs.discipline_stats_rollup.checks import CHECKS, evaluate_checks
from jobs_pipeline.jobs.discipline_stats_rollup.config import RollupConfig
from jobs_pipeline.jobs.discipline_stats_rollup.groups import write_groups
from jobs_pipeline.jobs.discipline_stats_rollup.partitions import (
    ALL_SHARDS_TAGS,
    ASSET_KEY,
    Scope,
    shard_groups,
    shard_of,
    user_shards,
)
from jobs_pipeline.jobs.discipline_stats_rollup.sql import (
    ShardCounts,
    count_stale_rows,
    prepare_transaction,
)
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.storage.users import find_user

JOB_NAME = "discipline_stats_rollup"
WRITES = ("user_discipline_stats",)


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
    """The run's result: the operators' `Result:` line and what `results.result_of` reads."""
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
    `result` entry: the run's totals are the observation's, which `results.result_of` reads.
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


def dry_run(
    db: AppDatabase, report: JobReport, config: RollupConfig, scope: Scope, now: datetime
) -> RollupDryRun:
    with db.transaction() as connection:
        prepare_transaction(connection, config.statement_timeout_minutes, config.work_mem_mb)
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
