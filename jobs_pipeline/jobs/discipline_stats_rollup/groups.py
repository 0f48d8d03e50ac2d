"""The run's shards written as groups at the same time, each on a connection and in a
transaction of its own, each taken again when the app deletes a user under it.
"""

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, exc

from jobs_pipeline.formats import first_line
from jobs_pipeline.job_parts.results import JobReport
from jobs_pipeline.jobs.discipline_stats_rollup.config import RollupConfig
from jobs_pipeline.jobs.discipline_stats_rollup.partitions import Scope
from jobs_pipeline.jobs.discipline_stats_rollup.sql import (
    ShardCounts,
    prepare_transaction,
    upsert_stats,
)
from jobs_pipeline.resources.database import AppDatabase, is_connection_loss
from jobs_pipeline.storage.engine import create_app_engine

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
                prepare_transaction(
                    connection, config.statement_timeout_minutes, config.work_mem_mb
                )
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
