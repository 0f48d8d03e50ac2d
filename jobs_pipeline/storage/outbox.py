"""The email outbox as an operator watches it: what it still holds, and how late the
oldest due email is. One reading for `doctor` and the Prometheus metrics, so the two
never disagree about whether delivery keeps up.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, and_, func, select

from jobs_pipeline.storage.project_tables import OUTBOX_STATUSES, email_outbox

# Every status but `sent`: sent emails are history, and counting them would make each
# reading scan the whole table.
HELD_STATUSES = tuple(status for status in OUTBOX_STATUSES if status != "sent")


@dataclass(frozen=True)
class Backlog:
    due: int  # pending emails whose time to be sent has come
    oldest_due_seconds: float  # how long the longest-due one has waited; 0 when none is due


def outbox_backlog(connection: Connection) -> Backlog:
    """Due emails and the oldest's lateness, by the database's clock (one indexed query:
    `email_outbox_due_idx` covers pending emails by due time).
    """
    pending_due = and_(
        email_outbox.c.status == "pending", email_outbox.c.next_attempt_at <= func.now()
    )
    late = func.extract("epoch", func.now() - func.min(email_outbox.c.next_attempt_at))
    due, oldest = connection.execute(
        select(func.count(), func.coalesce(late, 0)).where(pending_due)
    ).one()
    return Backlog(int(due), max(float(oldest), 0.0))


def outbox_held(connection: Connection) -> dict[str, int]:
    """Emails per status still in the outbox (every status but sent; 0 for one with none)."""
    rows = connection.execute(
        select(email_outbox.c.status, func.count())
        .where(email_outbox.c.status.in_(HELD_STATUSES))
        .group_by(email_outbox.c.status)
    ).all()
    counts = {status: int(count) for status, count in rows}
    return {status: counts.get(status, 0) for status in HELD_STATUSES}
