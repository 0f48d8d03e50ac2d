"""(a) The per-user loop, kept here only as the baseline to beat: all users loaded, then
three queries per user (stats, abort stats, upsert), each committed on its own.
"""

import uuid
from datetime import UTC, datetime

from sqlalchemy import Engine, text

SHOT_STATS = text(
    """
    SELECT count(*),
           count(*) FILTER (WHERE s.stop_loss_honored = true),
           count(*) FILTER (WHERE s.stop_loss_honored = false),
           count(*) FILTER (WHERE s.profit_target_honored = true),
           count(*) FILTER (WHERE s.profit_target_honored = false)
    FROM shots s JOIN aims a ON s.aim_id = a.id JOIN targets t ON a.target_id = t.id
    WHERE t.user_id = :user_id
    """
)
ABORT_STATS = text(
    """
    SELECT count(*) FILTER (WHERE abort_triggered = true),
           count(*) FILTER (WHERE abort_trigger IS NOT NULL AND abort_triggered = false)
    FROM targets WHERE user_id = :user_id
    """
)
UPSERT = text(
    """
    INSERT INTO user_discipline_stats (user_id, total_shots, stop_loss_honored_count,
        stop_loss_ignored_count, profit_target_honored_count, profit_target_ignored_count,
        abort_trigger_honored_count, abort_trigger_ignored_count, updated_at)
    VALUES (:user_id, :t, :slh, :sli, :pth, :pti, :abh, :abi, :now)
    ON CONFLICT (user_id) DO UPDATE SET total_shots = EXCLUDED.total_shots,
        stop_loss_honored_count = EXCLUDED.stop_loss_honored_count,
        stop_loss_ignored_count = EXCLUDED.stop_loss_ignored_count,
        profit_target_honored_count = EXCLUDED.profit_target_honored_count,
        profit_target_ignored_count = EXCLUDED.profit_target_ignored_count,
        abort_trigger_honored_count = EXCLUDED.abort_trigger_honored_count,
        abort_trigger_ignored_count = EXCLUDED.abort_trigger_ignored_count,
        updated_at = EXCLUDED.updated_at
    """
)


def per_user_rollup(engine: Engine, limit: int | None = None) -> int:
    """Runs the loop (autocommit: each statement its own transaction); returns the users
    processed.
    """
    now = datetime.now(UTC)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        # LIMIT NULL is no limit.
        all_users = text("SELECT id FROM users ORDER BY id LIMIT :limit")
        user_ids: list[uuid.UUID] = list(connection.scalars(all_users, {"limit": limit}))
        for user_id in user_ids:
            shots = connection.execute(SHOT_STATS, {"user_id": user_id}).one()
            aborts = connection.execute(ABORT_STATS, {"user_id": user_id}).one()
            connection.execute(
                UPSERT,
                {
                    "user_id": user_id,
                    "t": shots[0],
                    "slh": shots[1],
                    "sli": shots[2],
                    "pth": shots[3],
                    "pti": shots[4],
                    "abh": aborts[0],
                    "abi": aborts[1],
                    "now": now,
                },
            )
    return len(user_ids)
