"""Who did what in the Dagster UI: each write made through the door, kept for good.

A write is recorded before it is passed on to the webserver and finished with its
outcome once the webserver has answered, so a write the door let through is never
missing here, even when the admin API dies in between (its outcome then stays
`pending`). A request the door refused is recorded too, its outcome `refused: why`, so
attempts show beside what was done.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, or_, select, update

from jobs_pipeline.storage.project_tables import ui_actions


@dataclass(frozen=True)
class UiAction:
    action_id: int
    acted_at: datetime
    email: str
    action: str
    summary: str
    run_ids: list[str]
    backfill_id: str | None
    outcome: str


def record_action(
    connection: Connection, email: str, action: str, summary: str, detail: dict[str, Any]
) -> int:
    """The write about to be made, as pending; its id, for `finish_action`."""
    return int(
        connection.execute(
            insert(ui_actions)
            .values(email=email, action=action, summary=summary, detail=detail)
            .returning(ui_actions.c.id)
        ).scalar_one()
    )


REFUSED = "refused"


def record_refusal(
    connection: Connection,
    email: str,
    action: str,
    summary: str,
    detail: dict[str, Any],
    reason: str,
) -> int:
    """A request the door refused, with why."""
    return int(
        connection.execute(
            insert(ui_actions)
            .values(
                email=email,
                action=action,
                summary=summary,
                detail=detail,
                outcome=f"{REFUSED}: {reason}",
            )
            .returning(ui_actions.c.id)
        ).scalar_one()
    )


def finish_action(
    connection: Connection,
    action_id: int,
    *,
    run_ids: Sequence[str],
    backfill_id: str | None,
    outcome: str,
) -> None:
    connection.execute(
        update(ui_actions)
        .where(ui_actions.c.id == action_id)
        .values(run_ids=list(run_ids), backfill_id=backfill_id, outcome=outcome)
    )


COLUMNS = (
    ui_actions.c.id,
    ui_actions.c.acted_at,
    ui_actions.c.email,
    ui_actions.c.action,
    ui_actions.c.summary,
    ui_actions.c.run_ids,
    ui_actions.c.backfill_id,
    ui_actions.c.outcome,
)


def actions_on_run(
    connection: Connection, run_id: str, backfill_id: str | None = None
) -> list[UiAction]:
    """What the UI did that made or touched `run_id` (or the backfill it belongs to), oldest
    first.
    """
    touched = ui_actions.c.run_ids.contains([run_id])
    if backfill_id:
        touched = or_(touched, ui_actions.c.backfill_id == backfill_id)
    rows = connection.execute(select(*COLUMNS).where(touched).order_by(ui_actions.c.id))
    return [UiAction(*row) for row in rows]


def recent_actions(connection: Connection, limit: int) -> list[UiAction]:
    """The latest `limit` writes, oldest first."""
    latest = select(*COLUMNS).order_by(ui_actions.c.id.desc()).limit(limit).subquery()
    rows = connection.execute(select(latest).order_by(latest.c.id))
    return [UiAction(*row) for row in rows]
