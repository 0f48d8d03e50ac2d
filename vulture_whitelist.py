"""Names `vulture` cannot see used, for `make lint`'s dead-code check.

Each is called or read by a framework, not by this project's code: keep this list
short, and never put here a function of ours that nothing calls.
"""
# ruff: noqa: B018, F821

# Dagster calls a ConfigurableResource's lifecycle hooks around each execution.
_.setup_for_execution
_.teardown_after_execution

# Pydantic reads `model_config`; FastAPI serializes the answer models' fields and
# registers the route functions through their decorators.
model_config
status_url
detail
started_at
ended_at
dagster_job
jobs
run_job
run_status
list_jobs
_.openapi
# the door's routes (interfaces/door/signing_in.py, graphql_passage.py, socket_relay.py)
sign_in_form
sign_out
forbidden
slow_down
graphql
graphql_socket

# Alembic reads each migration's revision chain.
down_revision
branch_labels
depends_on

# Dagster loads the run launcher named in dagster.yaml and calls its hooks.
WorkerCheckingRunLauncher
ContainerRunLauncher
FleetRunLauncher
_.from_config_value
_.supports_check_run_worker_health
_.check_run_worker_health

# prometheus_client's registry calls a collector's `collect` at each scrape.
_.collect

# The jobs' results: fields pydantic writes into each result's JSON (`JobResult.as_json`).
_.would_update
_.would_change
_.would_send
_.would_deactivate
_.would_delete
_.would_process
_.would_queue3d
_.would_queue1d
_.undone_run
_.left_alone
_.would_delete_ledger_rows
