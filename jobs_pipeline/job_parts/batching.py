"""Bounded batches against a live app: short transactions, locked rows skipped.

A batch locks its rows with `FOR UPDATE SKIP LOCKED` in the same statement that
changes them, so a row the app holds is left for the next batch or run instead of
stalling the job, and the rule is re-checked on the row as it is when locked.
"""

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import CTE, ColumnElement, Connection, select

from jobs_pipeline.resources.database import AppDatabase

RowT = TypeVar("RowT")


def locked_batch(
    columns: Sequence[ColumnElement[Any]],
    condition: ColumnElement[bool],
    *,
    order_by: ColumnElement[Any],
    limit: int,
) -> CTE:
    """Up to `limit` rows matching `condition`, in `order_by` order, locked for this statement."""
    return (
        select(*columns)
        .where(condition)
        .order_by(order_by)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte()
    )


def run_batches(
    db: AppDatabase, batch: Callable[[Connection], Sequence[RowT]], limit: int
) -> Iterator[Sequence[RowT]]:
    """Runs `batch` in one short transaction after another until it comes up short.

    Each batch removes its rows from the candidates (changed or deleted), and
    locked rows are skipped, so a short batch means nothing unlocked is left.
    """
    while True:
        with db.transaction() as connection:
            rows = batch(connection)
        if rows:
            yield rows
        if len(rows) < limit:
            return
