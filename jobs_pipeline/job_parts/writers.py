"""One writer per app table, and dry runs that say so.

Each job's op names the app table it writes as its Dagster concurrency pool
(`dagster.yaml` gives every pool one slot), so runs through the instance, the asset
job and backfills included, never write a table two at a time; inside the step, the
database's advisory lock on each table holds the same line against a run started
past the instance.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import dagster as dg
from sqlalchemy import Connection

from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.storage.schema_migrations import ProjectSchemaOutdated, require_current_schema
from jobs_pipeline.tags import DRY_RUN_TAG


def writer_pool(table: str) -> str:
    """The Dagster concurrency pool of the runs that write `table`."""
    return f"writes_{table}"


@contextmanager
def job_step(
    context: dg.OpExecutionContext,
    db: AppDatabase,
    *,
    writes: Sequence[str],
    dry_run: bool,
) -> Iterator[None]:
    """Around a job's work: a dry run is tagged and takes no lock; a real run holds the
    writer lock of each app table in `writes`; a lost connection retries the step.
    """
    if dry_run:
        context.instance.add_run_tags(context.run_id, {DRY_RUN_TAG: "true"})
    with db.retry_on_connection_loss(), db.writer_lock([] if dry_run else writes, context.run_id):
        yield


def require_project_schema(connection: Connection) -> None:
    """The project's schema at this code's revision, else the run fails at once: no retry
    can fix it, and the failure says which command does.
    """
    try:
        require_current_schema(connection)
    except ProjectSchemaOutdated as outdated:
        raise dg.Failure(description=str(outdated), allow_retries=False) from None
