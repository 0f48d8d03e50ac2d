"""Sessions of the door in front of the Dagster UI, so that signing out ends one.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SCHEMA = "jobs_pipeline"


def upgrade() -> None:
    op.create_table(
        "ui_sessions",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("key_sha256", sa.Text, nullable=False, unique=True),
        sa.Column(
            "token_id",
            sa.BigInteger,
            sa.ForeignKey(f"{SCHEMA}.api_tokens.id"),
            nullable=False,
        ),
        sa.Column(
            "started_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("ended_at", sa.TIMESTAMP(timezone=True)),
        schema=SCHEMA,
    )
    op.create_index("ui_sessions_token_idx", "ui_sessions", ["token_id"], schema=SCHEMA)
    op.create_index("ui_sessions_time_idx", "ui_sessions", ["started_at"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("ui_sessions", schema=SCHEMA)
