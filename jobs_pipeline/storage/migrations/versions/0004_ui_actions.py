"""Who did what in the Dagster UI: every write made through the door.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SCHEMA = "jobs_pipeline"


def upgrade() -> None:
    op.create_table(
        "ui_actions",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column(
            "acted_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column(
            "detail", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        sa.Column(
            "run_ids",
            postgresql.ARRAY(sa.Text),
            nullable=False,
            server_default=sa.text("'{}'::text[]"),
        ),
        sa.Column("backfill_id", sa.Text),
        sa.Column("outcome", sa.Text, nullable=False, server_default="pending"),
        schema=SCHEMA,
    )
    op.create_index("ui_actions_time_idx", "ui_actions", ["acted_at"], schema=SCHEMA)
    op.create_index(
        "ui_actions_runs_idx", "ui_actions", ["run_ids"], postgresql_using="gin", schema=SCHEMA
    )
    op.create_index("ui_actions_backfill_idx", "ui_actions", ["backfill_id"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("ui_actions", schema=SCHEMA)
