"""The session's PostgreSQL as the tests reach it: the template every test's database is
cloned from, and a superuser connection for what only a superuser does.
"""

import psycopg
from psycopg import sql

from jobs_pipeline.storage.embedded import EmbeddedPostgres

# The database holding the contract's schema and the project's, cloned for each test.
TEMPLATE = "app_template"


def admin_connection(postgres: EmbeddedPostgres) -> psycopg.Connection:
    return psycopg.connect(
        host=str(postgres.pgdata), user="postgres", dbname="postgres", autocommit=True
    )


# A test server's data is thrown away with it: no crash needs surviving, so nothing is
# flushed to disk and no page is logged whole (a few percent less of the database's
# work; PostgreSQL was about a fifth of a deployment test's CPU).
THROWAWAY_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def make_throwaway(postgres: EmbeddedPostgres) -> None:
    """Sets `THROWAWAY_SETTINGS` on a test server, in effect at once (all reloadable)."""
    with admin_connection(postgres) as connection:
        for name, value in THROWAWAY_SETTINGS.items():
            connection.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
            )
        connection.execute("SELECT pg_reload_conf()")
