"""The app database as a Dagster resource.

Every connection carries a statement timeout and a lock timeout: the app writes
while the jobs run, and a job must never hang on a row the app holds.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

import dagster as dg
from pydantic import Field, PrivateAttr
from sqlalchemy import Connection, Engine, exc, func, select, text

from jobs_pipeline.storage.engine import APPLICATION_NAME, create_app_engine

# SQLSTATE classes that mean the connection, not the statement, failed: 08 (connection
# exception) and the server shutting down or starting up (57P01-57P03).
CONNECTION_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def is_connection_loss(error: exc.DBAPIError) -> bool:
    """A lost or refused connection, as opposed to a statement the server rejected.

    psycopg reports a refused connection, and one the server dropped, with no
    SQLSTATE; a statement timeout or lock timeout has one (57014, 55P03).
    """
    if error.connection_invalidated or isinstance(error, exc.InterfaceError):
        return True
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate is None:
        return isinstance(error, exc.OperationalError)
    return str(sqlstate).startswith(CONNECTION_SQLSTATES)


# The advisory-lock namespace of this project's writer locks (the first of the two keys).
WRITER_LOCK_NAMESPACE = 0x4A50_5000


def writer_lock_key(table: str) -> tuple[int, int]:
    return WRITER_LOCK_NAMESPACE, zlib.crc32(table.encode()) & 0x7FFF_FFFF


def holder_name(run_id: str) -> str:
    """The lock connection's `application_name`, which names the run to whoever waits."""
    return f"{APPLICATION_NAME} run {run_id}"


def holder_of(connection: Connection, key: tuple[int, int]) -> str:
    """Who holds the lock: the run its connection names, or the session's process id."""
    row = connection.execute(
        text(
            "SELECT a.application_name, a.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :namespace"
            " AND l.objid = :table_key AND l.objsubid = 2"
        ),
        {"namespace": key[0], "table_key": key[1]},
    ).first()
    connection.commit()
    if row is None:
        return "another run (it has just finished)"
    name, pid = row
    prefix = f"{APPLICATION_NAME} run "
    return f"run {name.removeprefix(prefix)}" if name.startswith(prefix) else f"session {pid}"


class WriterBusy(dg.Failure):
    """Another run holds the writer lock of a table this run writes: nothing was changed."""

    def __init__(self, table: str, holder: str, waited_seconds: float):
        super().__init__(
            description=(
                f"Another run is writing {table}: {holder}. This run waited"
                f" {waited_seconds:g} s for it and changed nothing; start it again once that"
                " run has ended (a scheduled run is taken by its next tick)."
            ),
            allow_retries=False,
        )


class AppDatabase(dg.ConfigurableResource):
    """The web app's PostgreSQL (its tables are the app's; the jobs change rows only)."""

    url: str = Field(description="SQLAlchemy/libpq URL of the app database (DATABASE_URL).")
    statement_timeout_ms: int = Field(
        default=60_000, gt=0, description="No single statement runs longer than this."
    )
    lock_timeout_ms: int = Field(
        default=2_000, gt=0, description="No statement waits longer than this for a row lock."
    )
    retry_delay_seconds: float = Field(
        default=300,
        ge=0,
        description="After a lost or refused connection, the step runs again after this delay.",
    )
    max_retries: int = Field(
        default=3, ge=0, le=20, description="How often a step is retried after connection loss."
    )
    writer_lock_wait_seconds: float = Field(
        default=300,
        ge=0,
        description=(
            "A run that finds another run writing the same app table waits this long for it,"
            " then fails having changed nothing."
        ),
    )

    _engine: Engine | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._engine = create_app_engine(
            self.url,
            statement_timeout_ms=self.statement_timeout_ms,
            lock_timeout_ms=self.lock_timeout_ms,
        )

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("AppDatabase is used outside a Dagster execution")
        return self._engine

    def retry_request(self) -> dg.RetryRequested:
        return dg.RetryRequested(
            max_retries=self.max_retries, seconds_to_wait=self.retry_delay_seconds
        )

    @contextmanager
    def retry_on_connection_loss(self) -> Iterator[None]:
        """Turns a lost or refused connection into a retry of the whole step.

        Only connection loss is retried: a timeout, a constraint or bad data fails at
        once. Every job is
        safe to run again (each rule is checked in the statement that applies it), so
        a retry never does anything twice.
        """
        try:
            yield
        except exc.DBAPIError as error:
            if is_connection_loss(error):
                raise self.retry_request() from error
            raise

    @contextmanager
    def writer_lock(self, tables: Sequence[str], run_id: str) -> Iterator[None]:
        """Holds the database's advisory lock on each of `tables` while the block runs.

        The last line of "one writer per app table", whatever started the run: the
        queue and Dagster's pools keep apart the runs that go through the instance,
        and this lock also holds against a run started past them (the CLI without a
        daemon, a second deployment). It lives on a connection of its own, so it ends
        with the run's process however that ends; the connection is never pooled again.
        """
        if not tables:
            yield
            return
        with self.engine.connect() as connection:
            try:
                connection.execute(
                    select(func.set_config("application_name", holder_name(run_id), False))
                )
                for table in sorted(set(tables)):
                    self._wait_for_lock(connection, table, run_id)
                yield
            finally:
                with contextlib.suppress(exc.DBAPIError):
                    connection.invalidate()  # closing the session releases its locks

    def _wait_for_lock(self, connection: Connection, table: str, run_id: str) -> None:
        key = writer_lock_key(table)
        give_up = time.monotonic() + self.writer_lock_wait_seconds
        said = False
        while True:
            # Committed at once: a session-level lock outlives the transaction, and the
            # connection must not sit idle in one while the run works.
            taken = connection.execute(select(func.pg_try_advisory_lock(*key))).scalar_one()
            connection.commit()
            if taken:
                return
            if time.monotonic() >= give_up:
                raise WriterBusy(table, holder_of(connection, key), self.writer_lock_wait_seconds)
            if not said:
                dg.get_dagster_logger().info(
                    f"Waiting up to {self.writer_lock_wait_seconds:g} s for"
                    f" {holder_of(connection, key)}, which is writing {table}"
                )
                said = True
            time.sleep(min(1.0, max(give_up - time.monotonic(), 0.0)))

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One short transaction: committed on success, rolled back on any error."""
        with self.engine.begin() as connection:
            yield connection

    def now(self) -> datetime:
        """The database's clock, so a run compares times on the same clock the app writes."""
        with self.engine.connect() as connection:
            now: datetime = connection.execute(select(func.clock_timestamp())).scalar_one()
            return now
