"""The app database as a Dagster resource.

Every connection carries a statement timeout and a lock timeout: the app writes
while the jobs run, and a job must never hang on a row the app holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import dagster as dg
from pydantic import Field, PrivateAttr
from sqlalchemy import Connection, Engine, create_engine, exc, func, select
from sqlalchemy.engine import make_url

APPLICATION_NAME = "jobs_pipeline"


def app_engine_url(url: str) -> str:
    """Pins the app database to psycopg 3, whatever driver the URL names or omits.

    SQLAlchemy 2.0 reads a bare `postgresql://` as psycopg2 and 2.1 as psycopg 3;
    naming the driver keeps the behaviour the same on both.
    """
    parsed = make_url(url)
    # libpq and many hosts also spell the scheme `postgres://`.
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ValueError(
            f"DATABASE_URL must be a PostgreSQL URL (postgresql://...), not {parsed.drivername!r}"
        )
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def create_app_engine(
    url: str, *, statement_timeout_ms: int = 60_000, lock_timeout_ms: int = 2_000
) -> Engine:
    return create_engine(
        app_engine_url(url),
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=2,
        connect_args={
            "application_name": APPLICATION_NAME,
            "options": (
                f"-c statement_timeout={int(statement_timeout_ms)}"
                f" -c lock_timeout={int(lock_timeout_ms)}"
                " -c idle_in_transaction_session_timeout=300000"
            ),
        },
    )


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
    return sqlstate.startswith(CONNECTION_SQLSTATES)


def first_line(error: BaseException) -> str:
    """An error's first line, without the SQL and parameters SQLAlchemy appends."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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

        Only connection loss: the original design's "DB connection failure: retry job
        in 5 minutes". A timeout, a constraint or bad data fails at once. Every job is
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
    def transaction(self) -> Iterator[Connection]:
        """One short transaction: committed on success, rolled back on any error."""
        with self.engine.begin() as connection:
            yield connection

    def now(self) -> datetime:
        """The database's clock, so a run compares times on the same clock the app writes."""
        with self.engine.connect() as connection:
            return connection.execute(select(func.clock_timestamp())).scalar_one()
