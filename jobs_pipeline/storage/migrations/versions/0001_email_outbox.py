"""The email outbox: trial reminders and tier-expired emails, queued then delivered.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = "jobs_pipeline"


def upgrade() -> None:
    op.create_table(
        "email_outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("user_id", sa.Uuid),
        sa.Column("template", sa.Text, nullable=False),
        sa.Column("dedupe_key", sa.Text, nullable=False, unique=True),
        sa.Column(
            "payload", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column(
            "created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "next_attempt_at",
            sa.TIMESTAMP(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.Column("claimed_at", sa.TIMESTAMP(timezone=True)),
        sa.Column("sent_at", sa.TIMESTAMP(timezone=True)),
        sa.CheckConstraint(
            "status IN ('pending', 'sending', 'sent', 'failed', 'unconfirmed')",
            name="email_outbox_status_known",
        ),
        schema=SCHEMA,
    )
    op.create_index(
        "email_outbox_due_idx",
        "email_outbox",
        ["next_attempt_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_table("email_outbox", schema=SCHEMA)
