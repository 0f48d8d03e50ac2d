"""The app database's engine: psycopg 3, and a timeout on every statement and lock.

Every connection carries a statement timeout and a lock timeout: the app writes while the
jobs run, and a job must never hang on a row the app holds.
"""

from sqlalchemy import Engine, create_engine
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
