"""The change ledger: every row a job changed or deleted, with its values before and after.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SCHEMA = "jobs_pipeline"


def upgrade() -> None:
    op.create_table(
        "change_ledger",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("job", sa.Text, nullable=False),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("row_key", sa.Text, nullable=False),
        sa.Column("before", postgresql.JSONB),
        sa.Column("after", postgresql.JSONB),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column(
            "changed_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=SCHEMA,
    )
    op.create_index("change_ledger_run_idx", "change_ledger", ["run_id"], schema=SCHEMA)
    op.create_index(
        "change_ledger_row_idx", "change_ledger", ["table_name", "row_key"], schema=SCHEMA
    )
    op.create_index("change_ledger_time_idx", "change_ledger", ["changed_at"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("change_ledger", schema=SCHEMA)
