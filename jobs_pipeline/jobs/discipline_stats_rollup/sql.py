"""The rollup's statements: every in-scope user's statistics computed in PostgreSQL, the
rows that changed written in one statement per group, and the counts per shard.

Only what changed is written: a row whose counts equal the computed ones is left out
before the upsert, and the upsert's `DO UPDATE ... WHERE` skips one another writer set
right meanwhile. Both compare the counts as one tuple (`counts_differ`).
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CTE,
    ColumnElement,
    Connection,
    Select,
    cast,
    func,
    literal,
    or_,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql.base import ReadOnlyColumnCollection

from jobs_pipeline.jobs.discipline_stats_rollup.partitions import Scope, user_shard
from jobs_pipeline.storage.app_tables import (
    Timestamptz,
    aims,
    shots,
    targets,
    user_discipline_stats,
    users,
)

STAT_COLUMNS = (
    "total_shots",
    "stop_loss_honored_count",
    "stop_loss_ignored_count",
    "profit_target_honored_count",
    "profit_target_ignored_count",
    "abort_trigger_honored_count",
    "abort_trigger_ignored_count",
)


def counts_differ(
    these: ReadOnlyColumnCollection[str, Any], those: ReadOnlyColumnCollection[str, Any]
) -> ColumnElement[bool]:
    """Whether two rows' counts differ, NULLs equal to NULLs."""
    return tuple_(*(these[name] for name in STAT_COLUMNS)).is_distinct_from(
        tuple_(*(those[name] for name in STAT_COLUMNS))
    )


def prepare_transaction(connection: Connection, timeout_minutes: int, work_mem_mb: int) -> None:
    """A bigger time limit and aggregate memory for this one transaction only."""
    connection.execute(
        select(
            func.set_config("statement_timeout", f"{timeout_minutes}min", True),
            func.set_config("work_mem", f"{work_mem_mb}MB", True),
        )
    )


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
            ~counts_differ(stored.c, computed.c),
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
        where=counts_differ(stored, insert.excluded),
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


def count_stale_rows(connection: Connection, scope: Scope, now: datetime) -> tuple[int, int]:
    """(users in scope, of them those whose stored row is missing or differs): the dry run."""
    computed = computed_stats(scope, now).subquery("computed")
    stored = user_discipline_stats
    differs = or_(
        stored.c.user_id.is_(None),
        counts_differ(stored.c, computed.c),
    )
    in_scope, stale = connection.execute(
        select(func.count(), func.count().filter(differs)).select_from(
            computed.outerjoin(stored, stored.c.user_id == computed.c.user_id)
        )
    ).one()
    return int(in_scope), int(stale)
