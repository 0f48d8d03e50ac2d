"""Alembic's entry point for the project's own schema `jobs_pipeline`.

Run through `jobs-pipeline db upgrade` (jobs_pipeline.storage.schema_migrations), which
hands over the connection; the version table lives in the project's schema too, so
nothing is written into the app's `public` schema.
"""

from alembic import context
from sqlalchemy import text

from jobs_pipeline.storage.project_tables import PROJECT_SCHEMA, project_metadata

connection = context.config.attributes["connection"]
connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{PROJECT_SCHEMA}"'))
context.configure(
    connection=connection,
    target_metadata=project_metadata,
    version_table_schema=PROJECT_SCHEMA,
    include_schemas=True,
    include_name=lambda name, type_, parent: type_ != "schema" or name == PROJECT_SCHEMA,
)
with context.begin_transaction():
    context.run_migrations()
