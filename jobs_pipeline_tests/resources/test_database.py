import pytest
from sqlalchemy import text

from jobs_pipeline.storage.engine import app_engine_url, create_app_engine


def test_every_connection_has_timeouts_and_names_itself(app_db_url):
    engine = create_app_engine(app_db_url, statement_timeout_ms=1234, lock_timeout_ms=567)
    try:
        with engine.connect() as c:
            assert c.execute(text("SHOW statement_timeout")).scalar_one() == "1234ms"
            assert c.execute(text("SHOW lock_timeout")).scalar_one() == "567ms"
            assert c.execute(text("SHOW application_name")).scalar_one() == "jobs_pipeline"
    finally:
        engine.dispose()


def test_a_statement_over_the_timeout_is_cancelled(app_db_url):
    engine = create_app_engine(app_db_url, statement_timeout_ms=200)
    try:
        with engine.connect() as c, pytest.raises(Exception, match="statement timeout"):
            c.execute(text("SELECT pg_sleep(5)"))
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@h:5432/db",
        "postgresql+psycopg2://u:p@h/db",
        "postgres://u:p@h/db",
        "postgresql+psycopg://u:p@h/db",
    ],
)
def test_the_app_database_always_uses_psycopg3(url):
    assert app_engine_url(url).startswith("postgresql+psycopg://u:p@h")


def test_a_url_that_is_not_postgresql_is_refused_without_echoing_it():
    with pytest.raises(ValueError, match="must be a PostgreSQL URL") as error:
        app_engine_url("mysql://u:hunter2secret@h/db")
    assert "hunter2secret" not in str(error.value)
