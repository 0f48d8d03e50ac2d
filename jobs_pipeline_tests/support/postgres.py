"""The session's PostgreSQL as the tests reach it: the template every test's database is
cloned from, and a superuser connection for what only a superuser does.
"""

import psycopg

from jobs_pipeline.storage.embedded import EmbeddedPostgres

# The database holding the contract's schema and the project's, cloned for each test.
TEMPLATE = "app_template"


def admin_connection(postgres: EmbeddedPostgres) -> psycopg.Connection:
    return psycopg.connect(
        host=str(postgres.pgdata), user="postgres", dbname="postgres", autocommit=True
    )
