"""The rollup's run config: what an operator may set in the Launchpad."""

import dagster as dg
from pydantic import Field

from jobs_pipeline.jobs.discipline_stats_rollup.partitions import SHARD_COUNT


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
