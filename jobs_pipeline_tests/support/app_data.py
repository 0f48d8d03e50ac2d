"""Rows written the way the app writes them, for tests to set up and inspect."""

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, text

from jobs_pipeline.storage.app_tables import global_config, promo_codes, promo_redemptions, users

_emails = iter(range(1, 10**9))


def add_user(connection: Connection, **values: Any) -> uuid.UUID:
    row = {"email": f"user{next(_emails)}@example.com", "role": "user", **values}
    return connection.execute(insert(users).values(row).returning(users.c.id)).scalar_one()


def add_expired_user(connection: Connection, now: datetime, tier: str = "premium", **values: Any):
    defaults = {"tier_source": "purchase", "tier_expires_at": now - timedelta(hours=1)}
    return add_user(connection, tier=tier, **{**defaults, **values})


def add_promo_code(connection: Connection, code: str, **values: Any) -> uuid.UUID:
    row = {"code": code, "tier": "premium", **values}
    return connection.execute(
        insert(promo_codes).values(row).returning(promo_codes.c.id)
    ).scalar_one()


def add_redemption(
    connection: Connection, code_id: uuid.UUID, user_id: uuid.UUID, redeemed_at: datetime
) -> uuid.UUID:
    return connection.execute(
        insert(promo_redemptions)
        .values(promo_code_id=code_id, user_id=user_id, redeemed_at=redeemed_at)
        .returning(promo_redemptions.c.id)
    ).scalar_one()


def set_override(connection: Connection, value: Any) -> None:
    connection.execute(insert(global_config).values(key="global_tier_override", value=value))


def user_row(engine: Engine, user_id: uuid.UUID) -> dict[str, Any]:
    with engine.connect() as connection:
        return dict(connection.execute(select(users).where(users.c.id == user_id)).one()._mapping)


def table_rows(engine: Engine, table) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(select(table).order_by(*table.primary_key.columns)).all()
    return [dict(row._mapping) for row in rows]


def db_now(engine: Engine) -> datetime:
    with engine.connect() as connection:
        return connection.exec_driver_sql("SELECT now()").scalar_one()


def slow_trigger(table: str, when: str, seconds: float) -> str:
    """SQL for a trigger that sleeps per row: a run still going when the test strikes.

    Each row it passes also takes a number from a sequence, which no rollback takes back:
    `rows_past_slow_trigger` reads how far an uncommitted statement has got.
    """
    return f"""
    CREATE SEQUENCE slow_{table}_rows;
    CREATE FUNCTION slow_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM nextval('slow_{table}_rows');
        PERFORM pg_sleep({seconds});
        RETURN COALESCE(NEW, OLD);
    END $$;
    CREATE TRIGGER slow_{table} {when} ON {table} FOR EACH ROW EXECUTE FUNCTION slow_{table}();
    """


def rows_past_slow_trigger(engine: Engine, table: str) -> int:
    """How many rows have gone through `table`'s slow trigger, committed or not."""
    with engine.connect() as c:
        last, called = c.execute(text(f"SELECT last_value, is_called FROM slow_{table}_rows")).one()
    return int(last) if called else 0
