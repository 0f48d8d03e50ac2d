"""The web app's tables, declared once for SQLAlchemy Core.

The app owns these tables (its migrations create and change them); the jobs
only read and write rows. The declarations mirror `app_schema.sql` beside this
file, itself a copy of the contract; a test reflects a database built from that
file and compares it with this metadata, so the two cannot drift apart silently.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    Integer,
    MetaData,
    Table,
    Text,
    Uuid,
    false,
    func,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP

app_metadata = MetaData()

Timestamptz = TIMESTAMP(timezone=True)

users = Table(
    "users",
    app_metadata,
    Column("id", Uuid, primary_key=True, server_default=text("gen_random_uuid()")),
    Column("email", Text, nullable=False, unique=True),
    Column("role", Text, nullable=False, server_default="user"),
    Column("tier", Text, nullable=False, server_default="free"),
    Column("tier_source", Text, nullable=False, server_default="default"),
    Column("tier_expires_at", Timestamptz),
    Column("trial_ends_at", Timestamptz),
    Column("created_at", Timestamptz, nullable=False, server_default=func.now()),
    Column("updated_at", Timestamptz, nullable=False, server_default=func.now()),
)

global_config = Table(
    "global_config",
    app_metadata,
    Column("key", Text, primary_key=True),
    Column("value", JSONB, nullable=False),
    Column("updated_at", Timestamptz, nullable=False, server_default=func.now()),
)

promo_codes = Table(
    "promo_codes",
    app_metadata,
    Column("id", Uuid, primary_key=True, server_default=text("gen_random_uuid()")),
    Column("code", Text, nullable=False, unique=True),
    Column("tier", Text, nullable=False),
    Column("duration_days", Integer, nullable=False, server_default="30"),
    Column("max_redemptions", Integer),
    Column("valid_from", Timestamptz),
    Column("valid_until", Timestamptz),
    Column("is_active", Boolean, nullable=False, server_default=true()),
    Column("created_at", Timestamptz, nullable=False, server_default=func.now()),
)

promo_redemptions = Table(
    "promo_redemptions",
    app_metadata,
    Column("id", Uuid, primary_key=True, server_default=text("gen_random_uuid()")),
    Column("promo_code_id", Uuid, ForeignKey("promo_codes.id"), nullable=False),
    Column("user_id", Uuid, ForeignKey("users.id"), nullable=False),
    Column("redeemed_at", Timestamptz, nullable=False, server_default=func.now()),
)

targets = Table(
    "targets",
    app_metadata,
    Column("id", Uuid, primary_key=True, server_default=text("gen_random_uuid()")),
    Column("user_id", Uuid, ForeignKey("users.id"), nullable=False),
    Column("symbol", Text, nullable=False),
    Column("abort_trigger", Text),
    Column("abort_triggered", Boolean, nullable=False, server_default=false()),
    Column("created_at", Timestamptz, nullable=False, server_default=func.now()),
)

aims = Table(
    "aims",
    app_metadata,
    Column("id", Uuid, primary_key=True, server_default=text("gen_random_uuid()")),
    Column("target_id", Uuid, ForeignKey("targets.id"), nullable=False),
    Column("created_at", Timestamptz, nullable=False, server_default=func.now()),
)

shots = Table(
    "shots",
    app_metadata,
    Column("id", Uuid, primary_key=True, server_default=text("gen_random_uuid()")),
    Column("aim_id", Uuid, ForeignKey("aims.id"), nullable=False),
    Column("stop_loss_honored", Boolean),
    Column("profit_target_honored", Boolean),
    Column("created_at", Timestamptz, nullable=False, server_default=func.now()),
)

user_discipline_stats = Table(
    "user_discipline_stats",
    app_metadata,
    Column("user_id", Uuid, ForeignKey("users.id"), primary_key=True),
    Column("total_shots", Integer, nullable=False, server_default="0"),
    Column("stop_loss_honored_count", Integer, nullable=False, server_default="0"),
    Column("stop_loss_ignored_count", Integer, nullable=False, server_default="0"),
    Column("profit_target_honored_count", Integer, nullable=False, server_default="0"),
    Column("profit_target_ignored_count", Integer, nullable=False, server_default="0"),
    Column("abort_trigger_honored_count", Integer, nullable=False, server_default="0"),
    Column("abort_trigger_ignored_count", Integer, nullable=False, server_default="0"),
    Column("updated_at", Timestamptz, nullable=False, server_default=func.now()),
)

PAID_TIERS = ("premium", "pro")
TIERS = ("free", *PAID_TIERS)
