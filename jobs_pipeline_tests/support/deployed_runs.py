"""Runs on the deployed topology, driven as the UI drives them: GraphQL, and gates.

The fixtures give a test the topology of docs/deploying.md
(`jobs_pipeline_tests.support.deployment`) on a fresh PostgreSQL storage, and the helpers start
and read runs through the webserver's GraphQL API (what the UI sends).

Where a run must still be going when the test strikes, a "gate" trigger on the table
it writes holds its first row until the test opens the gate: no guessing how slow is slow
enough, and nothing about speed is asserted. A run waits at the gate (pg_sleep in a loop)
rather than on a lock, because the jobs' connections set a 2-second lock_timeout.
"""

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, text

from jobs_pipeline.jobs.discipline_stats_rollup import ASSET_KEY
from jobs_pipeline.storage.app_database_setup import create_app_schema
from jobs_pipeline.storage.embedded import EmbeddedPostgres
from jobs_pipeline.storage.engine import create_app_engine
from jobs_pipeline.storage.schema_migrations import upgrade
from jobs_pipeline_tests.support.app_data import add_user
from jobs_pipeline_tests.support.deadlines import deadline
from jobs_pipeline_tests.support.deployment import (
    LOCATION_NAME,
    REPOSITORY_NAME,
    Deployment,
    running_deployment,
)

# Deadlines for waiting, never assertions about speed.
RUN_DEADLINE_S = 120
SETTLE_DEADLINE_S = 120

ENDED = ("SUCCESS", "FAILURE", "CANCELED")
IN_PROGRESS = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
# What the UI adds to every run and backfill it launches.
FROM_UI = {"key": "dagster/from_ui", "value": "true"}

ROLLUP_POOL = "writes_user_discipline_stats"

_database_numbers = itertools.count()


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def dagster_db_url(postgres: EmbeddedPostgres) -> Iterator[str]:
    """A fresh, empty database for Dagster's storage, dropped afterwards."""
    name = f"dagster_deployment_{next(_database_numbers)}"
    postgres.ensure_database(name)
    yield postgres.url(name, "postgresql+psycopg2")
    with psycopg.connect(
        host=str(postgres.pgdata), user="postgres", dbname="postgres", autocommit=True
    ) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@dataclass
class DeploymentDatabases:
    """A module's own app database (its schema and users laid in) and Dagster storage."""

    app_url: str
    engine: Engine
    dagster_url: str


def deployment_databases(
    postgres: EmbeddedPostgres, prefix: str, users: dict[str, str]
) -> DeploymentDatabases:
    """`<prefix>_app` with the contract's schema, the project's, and `users` (email: role);
    `<prefix>_dagster`, empty, for Dagster's storage.
    """
    postgres.ensure_database(f"{prefix}_app")
    postgres.ensure_database(f"{prefix}_dagster")
    url = postgres.url(f"{prefix}_app")
    engine = create_app_engine(url)
    create_app_schema(engine)
    upgrade(url)
    with engine.begin() as connection:
        for email, role in users.items():
            add_user(connection, email=email, role=role)
    return DeploymentDatabases(
        url, engine, postgres.url(f"{prefix}_dagster", "postgresql+psycopg2")
    )


@pytest.fixture
def deployment(tmp_path: Path, app_db_url: str, dagster_db_url: str) -> Iterator[Deployment]:
    with running_deployment(tmp_path, app_db_url, dagster_db_url) as running:
        yield running


# -- the gate: a run held on its first row until the test lets it go ------------------------------


def close_gate(engine: Engine, table: str) -> None:
    """Every row written to `table` waits while the gate is closed (a run still going)."""
    with engine.begin() as connection:
        connection.execute(
            text(
                f"""
                CREATE TABLE IF NOT EXISTS test_gate (closed boolean NOT NULL);
                INSERT INTO test_gate VALUES (true);
                CREATE FUNCTION gate_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    -- Each SELECT sees the latest commit: the loop ends when the test opens.
                    WHILE (SELECT bool_or(closed) FROM test_gate) LOOP
                        PERFORM pg_sleep(0.2);
                    END LOOP;
                    RETURN COALESCE(NEW, OLD);
                END $$;
                CREATE TRIGGER gate_{table} BEFORE INSERT OR UPDATE ON {table}
                    FOR EACH ROW EXECUTE FUNCTION gate_{table}();
                """
            )
        )


def open_gate(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("UPDATE test_gate SET closed = false"))


# -- GraphQL, as the UI sends it ---------------------------------------------------------------

LAUNCH_RUN = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""

RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      runId status jobName allPools
      tags { key value }
      eventConnection(limit: 10000) {
        events {
          __typename
          ... on MessageEvent { message timestamp stepKey eventType }
        }
      }
    }
  }
}
"""

# Only the status: what a wait polls, cheap for the webserver to answer however many
# events the run has.
RUN_STATUS = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status } }
}
"""

RUNS = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status jobName tags { key value } } }
  }
}
"""

SCHEDULE = """
query Schedule($selector: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $selector) {
    __typename
    ... on Schedule { name pipelineName scheduleState { status } }
  }
}
"""

SCHEDULE_DRY_RUN = """
mutation ScheduleDryRun($selectorData: ScheduleSelector!, $timestamp: Float) {
  scheduleDryRun(selectorData: $selectorData, timestamp: $timestamp) {
    __typename
    ... on DryRunInstigationTick {
      timestamp
      evaluationResult {
        runRequests { runKey jobName runConfigYaml tags { key value } }
        skipReason
        error { message }
      }
    }
    ... on Error { message }
  }
}
"""

LAUNCH_MULTIPLE_RUNS = """
mutation LaunchMultipleRuns($executionParamsList: [ExecutionParams!]!) {
  launchMultipleRuns(executionParamsList: $executionParamsList) {
    __typename
    ... on LaunchMultipleRunsResult {
      launchMultipleRunsResult {
        __typename
        ... on LaunchRunSuccess { run { runId } }
        ... on Error { message }
      }
    }
    ... on Error { message }
  }
}
"""

LAUNCH_PARTITION_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""

POOL = """
query Pool($pool: String) {
  instance { concurrencyLimit(concurrencyKey: $pool) {
    slotCount claimedSlots { runId stepKey } pendingStepRunIds
  } }
}
"""


def repository_selector() -> dict[str, str]:
    return {"repositoryLocationName": LOCATION_NAME, "repositoryName": REPOSITORY_NAME}


def execution_params(
    job_name: str, tags: list[dict[str, str]], run_config: str | dict[str, Any] | None = None
) -> dict[str, Any]:
    """What the UI's Launchpad sends: the job, its config, its tags plus the UI's own."""
    return {
        "selector": {**repository_selector(), "jobName": job_name},
        "runConfigData": run_config or {},
        "mode": "default",
        "executionMetadata": {"tags": [*tags, FROM_UI]},
    }


def launch_run(deployment: Deployment, job_name: str, tags: dict[str, str]) -> str:
    """The Launchpad's "Launch Run": queued, then started by the daemon."""
    tag_list = [{"key": key, "value": value} for key, value in tags.items()]
    result = deployment.graphql(LAUNCH_RUN, executionParams=execution_params(job_name, tag_list))[
        "launchRun"
    ]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def run_record(deployment: Deployment, run_id: str) -> dict[str, Any]:
    """The run with its tags as a dict and its events (timestamps in epoch milliseconds)."""
    run = deployment.graphql(RUN, runId=run_id)["runOrError"]
    assert run["__typename"] == "Run", run
    run["tags"] = {tag["key"]: tag["value"] for tag in run["tags"]}
    run["events"] = [e for e in run.pop("eventConnection")["events"] if "eventType" in e]
    return run


def event_types(run: dict[str, Any]) -> set[str]:
    return {event["eventType"] for event in run["events"] if event["eventType"]}


def runs_where(
    deployment: Deployment,
    tags: dict[str, str] | None = None,
    statuses: tuple[str, ...] | None = None,
) -> list[dict[str, Any]]:
    run_filter: dict[str, Any] = {}
    if tags:
        run_filter["tags"] = [{"key": key, "value": value} for key, value in tags.items()]
    if statuses:
        run_filter["statuses"] = list(statuses)
    answer = deployment.graphql(RUNS, filter=run_filter)["runsOrError"]
    assert answer["__typename"] == "Runs", answer
    return answer["results"]


def wait_for(
    deployment: Deployment,
    what: str,
    found: Callable[[], Any],
    deadline_s: float,
    interval_s: float = 0.5,
) -> Any:
    """Polls `found()` every `interval_s` until it returns something truthy, which it
    returns; fails with the processes' logs at the deadline.
    """
    give_up = time.monotonic() + deadline(deadline_s)
    while time.monotonic() < give_up:
        value = found()
        if value:
            return value
        time.sleep(interval_s)
    pytest.fail(f"not {what} within {deadline_s:.0f} s:\n{deployment.process_logs()}")


def wait_for_status(
    deployment: Deployment, run_id: str, statuses: tuple[str, ...], deadline_s: float
) -> dict[str, Any]:
    """The run's record (its tags and events) once its status is one of `statuses`."""

    def reached() -> bool:
        run = deployment.graphql(RUN_STATUS, runId=run_id)["runOrError"]
        return run.get("status") in statuses

    wait_for(deployment, f"run {run_id} {'/'.join(statuses)}", reached, deadline_s)
    return run_record(deployment, run_id)


def wait_for_end(deployment: Deployment, run_id: str) -> dict[str, Any]:
    return wait_for_status(deployment, run_id, ENDED, RUN_DEADLINE_S)


def run_lifecycle(run: dict[str, Any]) -> list[str]:
    """The run's own events (not its steps'), in order, with 1.13's RUN_* names."""
    names = ((event["eventType"] or "").replace("PIPELINE_", "RUN_") for event in run["events"])
    return [name for name in names if name.startswith("RUN_")]


def step_window(run: dict[str, Any]) -> tuple[int, int]:
    """When the run's (only) step started and ended, in epoch milliseconds."""
    starts = [int(e["timestamp"]) for e in run["events"] if e["eventType"] == "STEP_START"]
    ends = [
        int(e["timestamp"])
        for e in run["events"]
        if e["eventType"] in ("STEP_SUCCESS", "STEP_FAILURE")
    ]
    assert len(starts) == 1 and len(ends) == 1, (run["runId"], run["status"], starts, ends)
    return starts[0], ends[0]


def failure_reason(run: dict[str, Any]) -> str:
    """The messages of a run's failure events: the reason a run ended FAILURE."""
    return "; ".join(
        event["message"]
        for event in run["events"]
        if event["eventType"] in ("STEP_FAILURE", "RUN_FAILURE", "PIPELINE_FAILURE")
    )


def ended_cleanly(run: dict[str, Any]) -> bool:
    """SUCCESS, or FAILURE that says why: not CANCELED, not a failure without a reason."""
    return run["status"] == "SUCCESS" or (run["status"] == "FAILURE" and bool(failure_reason(run)))


def nothing_in_progress(deployment: Deployment) -> bool:
    return not runs_where(deployment, statuses=IN_PROGRESS)


def backfill_params(shards: tuple[str, ...], **tags: str) -> dict[str, Any]:
    """What the UI's "Materialize… > Launch backfill" sends for an asset's partitions:
    the asset selection and the partition names (its target is the hidden asset job),
    with the UI's tag and any the operator added.
    """
    return {
        "tags": [FROM_UI, *({"key": key, "value": value} for key, value in tags.items())],
        "assetSelection": [{"path": ASSET_KEY.path}],
        "partitionNames": list(shards),
        "fromFailure": False,
    }
