"""The change ledger: what each run did to which row, written with the change itself.

Each job's changing statement carries a second data-modifying CTE that inserts one
ledger row per changed row, so the change and its record commit or roll back
together. The rollup is exempt: its table is derived and recomputed daily.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import CTE, ColumnElement, cast, func, literal, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs_pipeline.storage.app_tables import Timestamptz
from jobs_pipeline.storage.project_tables import change_ledger

# A run can be undone for this long; the ledger keeps its rows longer than that.
UNDO_WINDOW_DAYS = 30
DEFAULT_RETENTION_DAYS = 90


@dataclass(frozen=True)
class RunIdentity:
    """Which run is changing rows, for the ledger."""

    run_id: str
    job: str


def utc_text(value: ColumnElement[Any] | datetime) -> ColumnElement[str]:
    """A timestamp as `2026-01-03T10:00:00Z`, the way the ledger's reasons show time."""
    column = cast(literal(value), Timestamptz) if isinstance(value, datetime) else value
    return func.to_char(func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:MI:SS"Z"')


def record(
    changed: CTE,
    run: RunIdentity,
    *,
    table: str,
    key: ColumnElement[Any],
    before: ColumnElement[Any] | None,
    after: ColumnElement[Any] | None,
    reason: ColumnElement[str],
) -> Any:
    """An INSERT into the ledger of one row per row of `changed`, to run as a CTE beside it."""
    null_json = cast(literal(None), JSONB)
    rows = select(
        literal(run.run_id),
        literal(run.job),
        literal(table),
        cast(key, change_ledger.c.row_key.type),
        before if before is not None else null_json,
        after if after is not None else null_json,
        reason,
    ).select_from(changed)
    return pg_insert(change_ledger).from_select(
        ["run_id", "job", "table_name", "row_key", "before", "after", "reason"], rows
    )


def changes_to_user(connection: Any, user_id: str) -> list[Any]:
    """Every ledger entry about a user: their own row, and rows of theirs (redemptions)."""
    from sqlalchemy import or_

    entries = select(change_ledger).where(
        or_(
            (change_ledger.c.table_name == "users") & (change_ledger.c.row_key == user_id),
            change_ledger.c.before["user_id"].astext == user_id,
            change_ledger.c.after["user_id"].astext == user_id,
        )
    )
    return list(
        connection.execute(entries.order_by(change_ledger.c.changed_at, change_ledger.c.id))
    )


def changes_of_run(connection: Any, run_id: str) -> list[Any]:
    """Every ledger entry a run wrote, in the order it made them."""
    entries = select(change_ledger).where(change_ledger.c.run_id == run_id)
    return list(
        connection.execute(entries.order_by(change_ledger.c.changed_at, change_ledger.c.id))
    )


def describe_change(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    """`tier: premium -> free, tier_source: purchase -> default`; a delete or an insert whole."""
    if after is None:
        return f"deleted {before}"
    if before is None:
        return f"inserted {after}"
    changed = [k for k in after if before.get(k) != after.get(k)]
    return ", ".join(f"{k}: {before.get(k)} -> {after.get(k)}" for k in changed) or "no change"
