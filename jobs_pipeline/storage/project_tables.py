"""The project's own tables, in its own PostgreSQL schema `jobs_pipeline`.

The app's tables are never altered; what the jobs keep for themselves lives here,
created and changed only by the migrations in `jobs_pipeline/storage/migrations`
(`jobs-pipeline db upgrade`).
"""

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from jobs_pipeline.storage.app_tables import Timestamptz

PROJECT_SCHEMA = "jobs_pipeline"

project_metadata = MetaData(schema=PROJECT_SCHEMA)

OUTBOX_STATUSES = ("pending", "sending", "sent", "failed", "unconfirmed")

# One row per email. `dedupe_key` makes queueing idempotent: a message for the same
# user, template and occasion is queued once, however often the job runs.
email_outbox = Table(
    "email_outbox",
    project_metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("recipient", Text, nullable=False),
    Column("user_id", Uuid),  # no foreign key: the app must stay free to delete users
    Column("template", Text, nullable=False),
    Column("dedupe_key", Text, nullable=False, unique=True),
    Column("payload", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    Column("created_at", Timestamptz, nullable=False, server_default=func.now()),
    Column("next_attempt_at", Timestamptz, nullable=False, server_default=func.now()),
    Column("claimed_at", Timestamptz),
    Column("sent_at", Timestamptz),
    CheckConstraint(
        f"status IN ({', '.join(repr(status) for status in OUTBOX_STATUSES)})",
        name="email_outbox_status_known",
    ),
    Index(
        "email_outbox_due_idx",
        "next_attempt_at",
        postgresql_where=text("status = 'pending'"),
    ),
)

# Admin-API tokens: only a token's SHA-256 is kept. The user's role is the app's
# word, read from `users.role` at every request, never copied here.
api_tokens = Table(
    "api_tokens",
    project_metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("user_id", Uuid, nullable=False),
    Column("token_sha256", Text, nullable=False, unique=True),
    Column("created_at", Timestamptz, nullable=False, server_default=func.now()),
    Column("revoked_at", Timestamptz),
    Column("last_used_at", Timestamptz),
)

# Every row a job changed or deleted: its values before and after (NULL after for a
# delete, which keeps the whole row), and the rule that applied. Written by the
# statement that makes the change, so neither exists without the other.
change_ledger = Table(
    "change_ledger",
    project_metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("run_id", Text, nullable=False),
    Column("job", Text, nullable=False),
    Column("table_name", Text, nullable=False),
    Column("row_key", Text, nullable=False),
    Column("before", JSONB),
    Column("after", JSONB),
    Column("reason", Text, nullable=False),
    Column("changed_at", Timestamptz, nullable=False, server_default=func.now()),
    Index("change_ledger_run_idx", "run_id"),
    Index("change_ledger_row_idx", "table_name", "row_key"),
    Index("change_ledger_time_idx", "changed_at"),
)

# Every write made in the Dagster UI through the door (launch, re-execute, backfill,
# terminate, a schedule or sensor started or stopped, a run deleted, ...): who, when,
# what, and the runs it made or acted on. Written before the write is passed on and
# finished with its outcome, so a write is never made unrecorded.
ui_actions = Table(
    "ui_actions",
    project_metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("acted_at", Timestamptz, nullable=False, server_default=func.now()),
    Column("email", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("summary", Text, nullable=False),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("run_ids", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("backfill_id", Text),
    Column("outcome", Text, nullable=False, server_default="pending"),
    Index("ui_actions_time_idx", "acted_at"),
    Index("ui_actions_runs_idx", "run_ids", postgresql_using="gin"),
    Index("ui_actions_backfill_idx", "backfill_id"),
)

# A session of the door: one sign-in with an API token, worth what that token is worth
# until it is signed out (`ended_at`), its token revoked, or a working day has passed.
# Only the SHA-256 of the key the session cookie carries is kept.
ui_sessions = Table(
    "ui_sessions",
    project_metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("key_sha256", Text, nullable=False, unique=True),
    Column("token_id", BigInteger, ForeignKey(api_tokens.c.id), nullable=False),
    Column("started_at", Timestamptz, nullable=False, server_default=func.now()),
    Column("ended_at", Timestamptz),
    Index("ui_sessions_token_idx", "token_id"),
    Index("ui_sessions_time_idx", "started_at"),
)
