"""`demo-data` and `db upgrade`: the app database and the project's schema in it."""

import os
import sys

from jobs_pipeline.interfaces.cli.common import EXIT_FAILED, UsageError
from jobs_pipeline.storage.embedded import (
    fill_environment,
)


def app_database_url() -> str:
    """`DATABASE_URL`; when unset, the embedded database's, given the app's schema (the
    project owns that database, never one `DATABASE_URL` names).
    """
    from jobs_pipeline.storage.app_database_setup import prepare_embedded_app_database

    environment = fill_environment(dagster_storage=False)
    url = os.environ["DATABASE_URL"]
    if environment.app_is_embedded:
        prepare_embedded_app_database(url, demo_data_when_empty=False)
    return url


def command_demo_data() -> int:
    from jobs_pipeline.storage.app_database_setup import (
        DemoDataRefused,
        load_demo_data,
        setup_engine,
    )

    url = app_database_url()
    with setup_engine(url) as engine:
        try:
            created = load_demo_data(engine)
        except DemoDataRefused as refusal:
            raise UsageError(str(refusal)) from None
    print(f"demo data: {created} users with their journals, promo codes and an override")
    return 0


# -- db upgrade -------------------------------------------------------------------------


def command_db_upgrade() -> int:
    from sqlalchemy import exc

    from jobs_pipeline.formats import first_line
    from jobs_pipeline.storage.app_database_setup import (
        AppTablesMissing,
        require_app_tables,
        setup_engine,
    )
    from jobs_pipeline.storage.schema_migrations import upgrade

    url = app_database_url()
    try:
        with setup_engine(url) as engine:
            require_app_tables(engine)
        revision = upgrade(url)
    except ValueError as error:
        raise UsageError(str(error)) from None
    except AppTablesMissing as missing:
        print(f"jobs-pipeline: db upgrade: {missing}", file=sys.stderr)
        return EXIT_FAILED
    except exc.DBAPIError as error:
        print(f"jobs-pipeline: db upgrade failed: {first_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    print(f"jobs_pipeline schema at revision {revision}")
    return 0
