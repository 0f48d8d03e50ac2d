"""undo-run: restore what one run changed, row by row, where nothing has changed since.

`jobs-pipeline undo RUN_ID [--dry-run]`. From the change ledger, each row the run
changed gets its old values back, but only where it still holds what the run wrote
(a user who renewed since, or whom the app changed, is left alone and listed); each
row it deleted is put back unless one with its key exists again. The undo is a run
of its own, recorded in the ledger like any other, so undoing twice does nothing
the second time, and an undo can itself be undone. A dry run executes the same
statements and rolls them back.

What it cannot take back: emails already sent (a downgrade's tier-expired email).
"""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import dagster as dg
from pydantic import Field
from sqlalchemy import Connection, Table, select, text

from jobs_pipeline.formats import display_name, iso_utc
from jobs_pipeline.job_parts.results import LOG_LINE_CAP, JobReport, JobResult, ResultJson
from jobs_pipeline.job_parts.scheduling import job_tags
from jobs_pipeline.job_parts.writers import job_step, require_project_schema
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.storage.app_tables import app_metadata
from jobs_pipeline.storage.ledger import UNDO_WINDOW_DAYS
from jobs_pipeline.storage.project_tables import change_ledger
from jobs_pipeline.tags import TOOL_TAG

JOB_NAME = "undo_run"
OP_NAME = "undo_changes"

# Columns an undo puts back for rows a job updated; `updated_at` is compared (so a
# row the app touched since is left alone) and then set to the undo's own time.
RESTORED_COLUMNS = {
    "users": ("tier", "tier_source", "tier_expires_at"),
    "promo_codes": ("is_active",),
}
TOUCHED_COLUMN = {"users": "updated_at"}


class UndoConfig(dg.Config):
    run_id: str = Field(description="The run whose changes to take back.")
    dry_run: bool = False
    undo_window_days: int = Field(default=UNDO_WINDOW_DAYS, ge=1, le=UNDO_WINDOW_DAYS)


@dataclass(frozen=True)
class UndoOf:
    """The run being undone, and the undo's own run (recorded in the ledger)."""

    run_id: str
    undo_run_id: str

    def execute(self, connection: Connection, statement: str, table: Table) -> list[str]:
        """Runs one restoring statement; returns the keys of the rows it restored."""
        parameters = {
            "run_id": self.run_id,
            "table": table.name,
            "undo_run_id": self.undo_run_id,
            "job": JOB_NAME,
            "reason": f"undo of run {self.run_id}",
        }
        return [str(key) for key in connection.execute(text(statement), parameters).scalars()]


def table_of(name: str) -> Table:
    return app_metadata.tables[name]


def key_column(table: Table) -> str:
    (column,) = table.primary_key.columns
    return str(column.name)


def restore_updates(connection: Connection, table: Table, runs: UndoOf) -> list[str]:
    """Rows the run updated get their old values back where they still hold the new."""
    columns = RESTORED_COLUMNS[table.name]
    touched = TOUCHED_COLUMN.get(table.name)
    compared = [*columns, *([touched] if touched else [])]
    old = f"(jsonb_populate_record(NULL::{table.name}, e.before))"
    new = f"(jsonb_populate_record(NULL::{table.name}, e.after))"
    assignments = [f"{c} = {old}.{c}" for c in columns]
    if touched:
        assignments.append(f"{touched} = clock_timestamp()")
    unchanged = " AND ".join(f"t.{c} IS NOT DISTINCT FROM {new}.{c}" for c in compared)
    snapshot = ", ".join(f"'{c}', t.{c}" for c in compared)
    statement = f"""
        WITH e AS (
            SELECT row_key, before, after FROM jobs_pipeline.change_ledger
            WHERE run_id = :run_id AND table_name = :table
              AND before IS NOT NULL AND after IS NOT NULL
        ), restored AS (
            UPDATE {table.name} AS t SET {", ".join(assignments)}
            FROM e
            WHERE t.{key_column(table)}::text = e.row_key AND {unchanged}
            RETURNING e.row_key, e.after AS was, jsonb_build_object({snapshot}) AS now_is
        ), recorded AS (
            INSERT INTO jobs_pipeline.change_ledger
                (run_id, job, table_name, row_key, before, after, reason)
            SELECT :undo_run_id, :job, :table, row_key, was, now_is, :reason FROM restored
        )
        SELECT row_key FROM restored
    """  # noqa: S608 - identifiers come from the app's declared tables, values are bound
    return runs.execute(connection, statement, table)


def restore_deletes(connection: Connection, table: Table, runs: UndoOf) -> list[str]:
    """Rows the run deleted are inserted again, unless their key exists again or a row
    they refer to (a user, a promo code) is gone.
    """
    key = key_column(table)
    row = f"(jsonb_populate_record(NULL::{table.name}, e.before))"
    references = " ".join(
        f"AND EXISTS (SELECT 1 FROM {fk.column.table.name} AS r"  # noqa: S608 - declared names
        f" WHERE r.{fk.column.name} = {row}.{fk.parent.name})"
        for fk in table.foreign_keys
    )
    statement = f"""
        WITH e AS (
            SELECT row_key, before FROM jobs_pipeline.change_ledger
            WHERE run_id = :run_id AND table_name = :table AND after IS NULL
        ), restored AS (
            INSERT INTO {table.name}
            SELECT {row}.* FROM e
            WHERE NOT EXISTS (SELECT 1 FROM {table.name} AS t WHERE t.{key}::text = e.row_key)
              {references}
            ON CONFLICT DO NOTHING
            RETURNING {key}::text AS row_key, to_jsonb({table.name}.*) AS now_is
        ), recorded AS (
            INSERT INTO jobs_pipeline.change_ledger
                (run_id, job, table_name, row_key, before, after, reason)
            SELECT :undo_run_id, :job, :table, row_key, NULL, now_is, :reason FROM restored
        )
        SELECT row_key FROM restored
    """  # noqa: S608 - identifiers come from the app's declared tables, values are bound
    return runs.execute(connection, statement, table)


def remove_inserts(connection: Connection, table: Table, runs: UndoOf) -> list[str]:
    """Rows the run inserted (an undo re-inserting what was deleted) are deleted again,
    where they are still exactly as inserted.
    """
    key = key_column(table)
    statement = f"""
        WITH e AS (
            SELECT row_key, after FROM jobs_pipeline.change_ledger
            WHERE run_id = :run_id AND table_name = :table AND before IS NULL
        ), removed AS (
            DELETE FROM {table.name} AS t USING e
            WHERE t.{key}::text = e.row_key AND to_jsonb(t.*) = e.after
            RETURNING e.row_key, e.after AS was
        ), recorded AS (
            INSERT INTO jobs_pipeline.change_ledger
                (run_id, job, table_name, row_key, before, after, reason)
            SELECT :undo_run_id, :job, :table, row_key, was, NULL, :reason FROM removed
        )
        SELECT row_key FROM removed
    """  # noqa: S608 - identifiers come from the app's declared tables, values are bound
    return runs.execute(connection, statement, table)


def recorded_changes(connection: Connection, run_id: str) -> list[tuple[str, str, Any]]:
    """(table, key, when) of every ledger entry of the run."""
    rows = connection.execute(
        select(change_ledger.c.table_name, change_ledger.c.row_key, change_ledger.c.changed_at)
        .where(change_ledger.c.run_id == run_id)
        .order_by(change_ledger.c.id)
    ).all()
    return [(str(t), str(k), w) for t, k, w in rows]


def kinds_of_change(connection: Connection, run_id: str) -> dict[str, set[str]]:
    """Per table, which kinds of change the run made: updated, deleted, inserted rows."""
    rows = connection.execute(
        text(
            "SELECT table_name,"
            " bool_or(before IS NOT NULL AND after IS NOT NULL),"
            " bool_or(after IS NULL), bool_or(before IS NULL)"
            " FROM jobs_pipeline.change_ledger WHERE run_id = :run_id GROUP BY table_name"
        ),
        {"run_id": run_id},
    ).all()
    kinds: dict[str, set[str]] = {}
    for table, updated, deleted, inserted in rows:
        kinds[str(table)] = {
            kind
            for kind, present in (
                ("updated", updated),
                ("deleted", deleted),
                ("inserted", inserted),
            )
            if present
        }
    return kinds


STEPS = {"updated": restore_updates, "deleted": restore_deletes, "inserted": remove_inserts}


def undo(connection: Connection, runs: UndoOf) -> list[tuple[str, str]]:
    """Every restorable change of the run, restored; returns (table, key) of each.

    Only the statements a table's changes call for are run: PostgreSQL checks
    privileges before a statement runs, and the jobs' role may update `users` but
    never insert into it or delete from it.
    """
    restored: list[tuple[str, str]] = []
    for name, kinds in sorted(kinds_of_change(connection, runs.run_id).items()):
        table = table_of(name)
        for kind in ("updated", "deleted", "inserted"):
            if kind in kinds:
                restored += [(name, key) for key in STEPS[kind](connection, table, runs)]
    return restored


class UndoResult(JobResult):
    """Its dry run's is the same, `dryRun` true and nothing written."""

    dry_run: bool
    undone_run: str
    restored: int
    left_alone: int
    # The first LOG_LINE_CAP rows left alone: `table`, `key`, `email`, `why`.
    left_alone_rows: list[dict[str, Any]]
    timestamp: str


@dg.op(name=OP_NAME)
def undo_changes(
    context: dg.OpExecutionContext, config: UndoConfig, db: AppDatabase
) -> dg.Output[ResultJson]:
    """Takes back what one run changed, row by row, where the row still holds what the
    run wrote; rows changed since are left alone and listed.
    """
    with db.transaction() as connection:
        require_project_schema(connection)
        tables = sorted(kinds_of_change(connection, config.run_id))
    # The same writer locks as the jobs whose rows it puts back.
    with job_step(context, db, writes=tables, dry_run=config.dry_run):
        return undo_recorded_changes(context, config, db)


def undo_recorded_changes(
    context: dg.OpExecutionContext, config: UndoConfig, db: AppDatabase
) -> dg.Output[ResultJson]:
    report = JobReport(context, display_name(JOB_NAME))
    now = db.now()
    with db.engine.connect() as connection:
        transaction = connection.begin()
        try:
            require_project_schema(connection)
            changes = recorded_changes(connection, config.run_id)
            check_undoable(config, changes, now)
            restored = undo(connection, UndoOf(config.run_id, context.run_id))
        except BaseException:
            transaction.rollback()
            raise
        done = set(restored)
        left = [(t, k) for t, k, _ in changes if (t, k) not in done]
        # Read inside the undo's own transaction: what it saw when it left them.
        explained = left_alone_rows(connection, config.run_id, left)
        if config.dry_run:
            transaction.rollback()
        else:
            transaction.commit()
    verb = "Would restore" if config.dry_run else "Restored"
    for table, key in restored:
        report.row(f"{verb} {table} {key}")
    report.end_rows("rows")
    for row in explained:
        report.row(f"Left alone: {describe_left(row)}")
    report.end_rows("rows left alone", total=len(left))
    return report.result(
        UndoResult(
            dry_run=config.dry_run,
            undone_run=config.run_id,
            restored=len(restored),
            left_alone=len(left),
            left_alone_rows=explained,
            timestamp=iso_utc(now),
        )
    )


def describe_left(row: dict[str, Any]) -> str:
    """`users 0b6c... (ann@example.com): the app or a later run changed it since this run`."""
    whose = f" ({row['email']})" if row.get("email") else ""
    return f"{row['table']} {row['key']}{whose}: {row['why']}"


def left_alone_rows(
    connection: Connection, run_id: str, left: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Why each row the undo left alone was left, and whose it is (the user's email),
    for the first LOG_LINE_CAP of them: one statement per table.
    """
    shown = left[:LOG_LINE_CAP]
    explained: dict[tuple[str, str], dict[str, Any]] = {}
    for name in sorted({table for table, _ in shown}):
        keys = [key for table, key in shown if table == name]
        for row in connection.execute(
            text(why_left_statement(table_of(name))),
            {"run_id": run_id, "table": name, "keys": keys},
        ):
            explained[(name, row.row_key)] = {
                "table": name,
                "key": row.row_key,
                "email": row.email,
                "why": row.why,
            }
    return [explained[entry] for entry in shown if entry in explained]


def why_left_statement(table: Table) -> str:
    """The undone run's entries for some keys of `table`, each with the reason the undo
    could not restore it and the email of the user it belongs to.
    """
    key = key_column(table)
    user_of = "t.id::text" if table.name == "users" else "coalesce(e.before, e.after)->>'user_id'"
    restored = RESTORED_COLUMNS.get(table.name, ())
    now_is = ", ".join(f"'{c}', t.{c}" for c in restored)
    was = ", ".join(f"'{c}', e.before -> '{c}'" for c in restored)
    holds_old = f"jsonb_build_object({now_is}) = jsonb_build_object({was})" if restored else "false"
    return f"""
        SELECT e.row_key,
            (SELECT u.email FROM users AS u WHERE u.id::text = {user_of}) AS email,
            CASE
                WHEN e.before IS NULL AND t.{key} IS NULL THEN 'it is gone already'
                WHEN e.before IS NULL THEN 'it changed since it was put back'
                WHEN e.after IS NULL AND t.{key} IS NOT NULL
                    THEN 'a row with its key exists again'
                WHEN e.after IS NULL THEN 'a row it refers to is gone'
                WHEN t.{key} IS NULL THEN 'the row is gone'
                WHEN {holds_old} THEN 'it holds its old values already (undone before)'
                ELSE 'the app or a later run changed it since this run'
            END AS why
        FROM jobs_pipeline.change_ledger AS e
        LEFT JOIN {table.name} AS t ON t.{key}::text = e.row_key
        WHERE e.run_id = :run_id AND e.table_name = :table AND e.row_key = ANY(:keys)
    """  # noqa: S608 - identifiers come from the app's declared tables, values are bound


def check_undoable(config: UndoConfig, changes: list[tuple[str, str, Any]], now: Any) -> None:
    if not changes:
        raise dg.Failure(
            description=f"run {config.run_id} has no changes in the ledger (none made, or"
            " past the ledger's retention)",
            allow_retries=False,
        )
    oldest = min(when for _, _, when in changes)
    if now - oldest > timedelta(days=config.undo_window_days):
        raise dg.Failure(
            description=f"run {config.run_id} is older than the undo window"
            f" ({config.undo_window_days} days)",
            allow_retries=False,
        )


@dg.job(
    name=JOB_NAME,
    description="Take back what one run changed (jobs-pipeline undo RUN_ID); not scheduled.",
    tags={**job_tags(JOB_NAME, "high"), TOOL_TAG: "true"},
)
def undo_run_job() -> None:
    undo_changes()
