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

from jobs_pipeline.jobs.discipline_stats_rollup.asset import (
    JOB_NAME,
    WRITES,
    RollupDryRun,
    RollupResult,
    discipline_stats_rollup_job,
    discipline_stats_rollup_schedule,
    user_discipline_stats_asset,
)
from jobs_pipeline.jobs.discipline_stats_rollup.checks import (
    user_discipline_stats_freshness_checks,
    user_discipline_stats_freshness_sensor,
)
from jobs_pipeline.jobs.discipline_stats_rollup.config import RollupConfig
from jobs_pipeline.jobs.discipline_stats_rollup.partitions import (
    ALL_SHARDS_TAGS,
    ASSET_KEY,
    SHARD_COUNT,
    Scope,
    shard_groups,
    shard_of,
    user_shard,
    user_shards,
)
from jobs_pipeline.jobs.discipline_stats_rollup.sql import STAT_COLUMNS

__all__ = [
    "ALL_SHARDS_TAGS",
    "ASSET_KEY",
    "JOB_NAME",
    "SHARD_COUNT",
    "STAT_COLUMNS",
    "WRITES",
    "RollupConfig",
    "RollupDryRun",
    "RollupResult",
    "Scope",
    "discipline_stats_rollup_job",
    "discipline_stats_rollup_schedule",
    "shard_groups",
    "shard_of",
    "user_discipline_stats_asset",
    "user_discipline_stats_freshness_checks",
    "user_discipline_stats_freshness_sensor",
    "user_shard",
    "user_shards",
]
