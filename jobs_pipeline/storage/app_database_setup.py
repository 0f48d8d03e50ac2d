"""Builds and fills an app database for the embedded default and tests.

The app's own migrations own its schema in production; this module only lays
the contract's schema into a database the project created itself, and fills an
empty one with demo data.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources

from sqlalchemy import Connection, Engine, func, inspect, select

from jobs_pipeline.storage.app_tables import app_metadata, users
from jobs_pipeline.storage.engine import create_app_engine

# Laying a schema or demo data is one long transaction, unlike a job's statements.
SETUP_STATEMENT_TIMEOUT_MS = 600_000


class DemoDataRefused(RuntimeError):
    """Demo data goes only into an app database with no users."""


def read_sql(name: str) -> str:
    return (
        resources.files("jobs_pipeline.storage").joinpath("sql", name).read_text(encoding="utf-8")
    )


def has_app_schema(engine: Engine) -> bool:
    return inspect(engine).has_table("users")


def missing_app_tables(engine: Engine) -> list[str]:
    """The app's tables the jobs read or write that this database lacks (its public schema)."""
    present = set(inspect(engine).get_table_names())
    return sorted(name for name in app_metadata.tables if name not in present)


class AppTablesMissing(RuntimeError):
    """The database has none, or not all, of the app's tables: not the app's database."""

    def __init__(self, missing: list[str]):
        super().__init__(
            f"the app's tables are missing from this database: {', '.join(missing)}. Is"
            " DATABASE_URL the app's database? The app's own migrations create them; for a"
            " trial on an empty database, `jobs-pipeline setup --create-app-tables` lays the"
            " app's schema in"
        )
        self.missing = missing


def require_app_tables(engine: Engine) -> None:
    missing = missing_app_tables(engine)
    if missing:
        raise AppTablesMissing(missing)


def run_script(connection: Connection, name: str) -> None:
    """Runs a packaged SQL script as one multi-statement string.

    Through the driver's own connection: psycopg parses `%` as a placeholder
    whenever parameters are passed at all, and a script has none.
    """
    driver_connection = connection.connection.driver_connection
    if driver_connection is None:
        raise RuntimeError("the connection has no psycopg connection under it")
    driver_connection.execute(read_sql(name))


def create_app_schema(engine: Engine) -> None:
    """Runs the contract's `app_schema.sql` (only in a database the project owns)."""
    with engine.begin() as connection:
        run_script(connection, "app_schema.sql")


def user_count(connection: Connection) -> int:
    return int(connection.execute(select(func.count()).select_from(users)).scalar_one())


def load_demo_data(engine: Engine) -> int:
    """Fills an empty app database with demo data; returns the number of users made."""
    if not has_app_schema(engine):
        raise DemoDataRefused(
            "the app's tables are missing from this database (its schema is the app's to create)"
        )
    with engine.begin() as connection:
        existing = user_count(connection)
        if existing:
            raise DemoDataRefused(
                f"the app database already has {existing} users; demo data goes only into an"
                " empty database"
            )
        run_script(connection, "demo_data.sql")
        return user_count(connection)


@contextmanager
def setup_engine(url: str) -> Iterator[Engine]:
    engine = create_app_engine(url, statement_timeout_ms=SETUP_STATEMENT_TIMEOUT_MS)
    try:
        yield engine
    finally:
        engine.dispose()


def prepare_embedded_app_database(url: str, *, demo_data_when_empty: bool) -> int:
    """The contract's schema in the embedded database (which the project owns), and
    demo data if asked and it has no users; returns the demo users made (0 if none).

    Never called for a database named by `DATABASE_URL`: that schema is the app's.
    """
    with setup_engine(url) as engine:
        if not has_app_schema(engine):
            create_app_schema(engine)
        if not demo_data_when_empty:
            return 0
        with engine.connect() as connection:
            if user_count(connection):
                return 0
        return load_demo_data(engine)
