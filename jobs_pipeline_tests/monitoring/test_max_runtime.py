"""A stuck run is stopped: `dagster/max_runtime` enforced by run monitoring, for real.

`jobs-pipeline dev` (webserver and daemon, dagster.yaml's run monitoring) runs
tier_expiration against the test's own app database, where a trigger makes every
user update sleep a second; the run is submitted with a 4-second maximum runtime
and must be failed by the daemon long before it gets through the users.
"""

import json
import time
import urllib.request
from typing import Any

import pytest
from dagster_graphql import DagsterGraphQLClient
from sqlalchemy import Engine, func, select, text

from jobs_pipeline.jobs.tier_expiration import JOB_NAME, OP_NAME
from jobs_pipeline.storage.app_tables import users
from jobs_pipeline_tests.support.app_data import add_expired_user, db_now
from jobs_pipeline_tests.support.deadlines import deadline
from jobs_pipeline_tests.support.dev_server import (
    Dev,
    running_dev,
    short_state_dir,
    wait_for_run,
)
from jobs_pipeline_tests.support.processes import tail

EXPIRED_USERS = 40
MAX_RUNTIME_S = 4
# Run monitoring polls every 5 s (dagster.yaml); the run is started, overruns and is stopped.
RUN_DEADLINE_S = 60
SETTLE_DEADLINE_S = 20

SLOW_UPDATES = """
CREATE FUNCTION slow_user_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(1);
    RETURN NEW;
END
$$;
CREATE TRIGGER slow_user_update BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION slow_user_update();
"""

RUN_EVENTS = """
query RunEvents($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      status
      tags { key value }
      eventConnection { events { __typename ... on MessageEvent { message } } }
    }
  }
}
"""


def graphql(dev: Dev, query: str, **variables: Any) -> dict[str, Any]:
    request = urllib.request.Request(
        dev.url("/graphql"),
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    assert "errors" not in answer, answer
    return answer["data"]


def downgraded(engine: Engine) -> int:
    with engine.connect() as connection:
        statement = select(func.count()).select_from(users).where(users.c.tier == "free")
        return int(connection.execute(statement).scalar_one())


def settled_downgrades(engine: Engine) -> int:
    """The downgrade count once it has stopped moving (a live run moves it every second)."""
    give_up = time.monotonic() + deadline(SETTLE_DEADLINE_S)
    counts = [downgraded(engine)]
    while time.monotonic() < give_up:
        time.sleep(1)
        counts.append(downgraded(engine))
        if len(counts) >= 4 and len(set(counts[-4:])) == 1:
            return counts[-1]
    pytest.fail(f"downgrades still going on after the run ended: {counts}")


def test_a_run_over_its_max_runtime_is_stopped_and_fails(engine, app_db_url, tmp_path_factory):
    with engine.begin() as connection:
        connection.execute(text(SLOW_UPDATES))
        now = db_now(engine)
        for _ in range(EXPIRED_USERS):
            add_expired_user(connection, now)
    assert downgraded(engine) == 0

    state = short_state_dir(tmp_path_factory)
    with running_dev(state, DATABASE_URL=app_db_url) as dev:
        client = DagsterGraphQLClient("127.0.0.1", port_number=dev.port)
        run_id = client.submit_job_execution(
            JOB_NAME,
            tags={"dagster/max_runtime": str(MAX_RUNTIME_S)},
            run_config={"ops": {OP_NAME: {"config": {"batch_size": 1}}}},
        )

        # The daemon marks the run CANCELING, signals it, then records its failure. A worker
        # that reads CANCELING before that record lands ends the run CANCELED after it
        # (Dagster's own race); the failure event, which the failure alert reads, is there
        # either way.
        assert wait_for_run(client, run_id, dev) in ("FAILURE", "CANCELED"), tail(dev.log)

        run = graphql(dev, RUN_EVENTS, runId=run_id)["runOrError"]
        assert run["__typename"] == "Run", run
        tags = {tag["key"]: tag["value"] for tag in run["tags"]}
        assert tags["dagster/max_runtime"] == str(MAX_RUNTIME_S)
        messages = [event.get("message") or "" for event in run["eventConnection"]["events"]]
        failures = [
            event.get("message") or ""
            for event in run["eventConnection"]["events"]
            if event["__typename"] == "RunFailureEvent"
        ]
        assert f"Exceeded maximum runtime of {MAX_RUNTIME_S} seconds." in failures, messages

        # The run was really stopped, not just marked: the downgrades stopped short.
        stopped_at = settled_downgrades(engine)
        assert stopped_at < EXPIRED_USERS, tail(dev.log)
