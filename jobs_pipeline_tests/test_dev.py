"""`jobs-pipeline dev`, the README's first command: run for real, driven over HTTP."""

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dagster_graphql import DagsterGraphQLClient

from jobs_pipeline_tests.processes import (
    JOBS_PIPELINE,
    alive,
    answers_200,
    cli_environment,
    descendants,
    free_port,
    kill_groups,
    process_groups,
    tail,
    wait_for_url,
)

pytestmark = pytest.mark.filterwarnings(
    # dagster_graphql's client still calls gql the old way.
    "ignore:Using variable_values and operation_name:DeprecationWarning"
)

STARTUP_DEADLINE_S = 120
RUN_DEADLINE_S = 90
SHUTDOWN_DEADLINE_S = 60

SCHEDULES = {
    "tier_expiration": "15 0 * * *",
    "global_override_check": "0 * * * *",
    "promo_cleanup": "0 2 * * 0",
    "discipline_stats_rollup": "0 1 * * *",
}
SENSORS = {
    "run_failure_alert_sensor",
    "alert_redelivery_sensor",
    "long_running_run_sensor",
    "failure_rate_sensor",
    "user_discipline_stats_freshness_sensor",
}

REPOSITORIES = """
{
  repositoriesOrError {
    __typename
    ... on RepositoryConnection {
      nodes {
        name
        location { name }
        jobs { name }
        schedules { name cronSchedule pipelineName scheduleState { status } }
        sensors { name sensorState { status } }
      }
    }
  }
}
"""


@dataclass
class Dev:
    process: subprocess.Popen
    port: int
    state_dir: Path
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextmanager
def running_dev(state_dir: Path, **variables: str) -> Iterator[Dev]:
    """`jobs-pipeline dev` in a session of its own; always stopped, all of it, on the way out."""
    port = free_port()
    log = state_dir.parent / "dev.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(JOBS_PIPELINE), "dev", "--port", str(port)],
            env=cli_environment(state_dir, **variables),
            cwd=state_dir.parent,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    dev = Dev(process=process, port=port, state_dir=state_dir, log=log)
    # `dev` runs Dagster in a process group of its own. Its groups are noted while the
    # tree is intact: once `dev` itself is gone, whatever it left behind has no parent to
    # be found by, and must still be killed below.
    groups = {process.pid}
    try:
        wait_for_url(dev.url("/server_info"), process, log, STARTUP_DEADLINE_S)
        groups |= process_groups(descendants(process.pid))
        yield dev
    finally:
        groups |= process_groups(descendants(process.pid))
        kill_groups({process.pid}, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=SHUTDOWN_DEADLINE_S)
        kill_groups(groups, signal.SIGKILL)
        process.wait(timeout=10)
        stop_orphaned_postgres(state_dir / "pgdata")


def stop_orphaned_postgres(pgdata: Path) -> None:
    """The embedded server outlives a killed `dev` (pg_ctl detaches it): stop it here."""
    pid_file = pgdata / "postmaster.pid"
    if pid_file.exists():
        with contextlib.suppress(ValueError, ProcessLookupError, IndexError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)  # a fast shutdown


def stop(dev: Dev) -> list[int]:
    """SIGTERM to the dev process's group, as a terminal's Ctrl-C or a service manager would.

    Returns the processes that were running under it, for the caller to check on.
    """
    below = descendants(dev.process.pid)
    assert below, "dev started no processes"
    kill_groups({dev.process.pid}, signal.SIGTERM)
    try:
        dev.process.wait(timeout=SHUTDOWN_DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"dev did not exit within {SHUTDOWN_DEADLINE_S} s of SIGTERM:\n{tail(dev.log)}")
    assert dev.process.returncode == 0, tail(dev.log)
    return below


def left_running(pids: list[int], deadline_s: float = 15) -> list[int]:
    """Those of `pids` still alive once `deadline_s` has passed (or none, as soon as none are)."""
    give_up = time.monotonic() + deadline_s
    while (running := [pid for pid in pids if alive(pid)]) and time.monotonic() < give_up:
        time.sleep(0.5)
    return running


def graphql(dev: Dev, query: str) -> dict[str, Any]:
    request = urllib.request.Request(
        dev.url("/graphql"),
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    assert "errors" not in answer, answer
    return answer["data"]


def connect(pgdata: Path, database: str) -> psycopg.Connection:
    return psycopg.connect(host=str(pgdata), user="postgres", dbname=database, autocommit=True)


def short_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The embedded server's unix socket lives in STATE_DIR/pgdata (a ~107-byte limit).
    state = tmp_path_factory.mktemp("dev") / "s"
    assert len(str(state / "pgdata" / ".s.PGSQL.5432")) < 100, state
    return state


def wait_for_run(client: DagsterGraphQLClient, run_id: str, dev: Dev) -> str:
    give_up = time.monotonic() + RUN_DEADLINE_S
    status = None
    while time.monotonic() < give_up:
        status = client.get_run_status(run_id).value
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(1)
    pytest.fail(f"run {run_id} still {status} after {RUN_DEADLINE_S} s:\n{tail(dev.log)}")


def test_dev_serves_the_jobs_with_demo_data_and_runs_them_through_the_queue(
    tmp_path_factory,
):
    state = short_state_dir(tmp_path_factory)
    with running_dev(state) as dev:
        repositories = graphql(dev, REPOSITORIES)["repositoriesOrError"]
        assert repositories["__typename"] == "RepositoryConnection", repositories
        (repository,) = repositories["nodes"]
        assert repository["location"]["name"] == "jobs_pipeline"
        assert {job["name"] for job in repository["jobs"]} >= set(SCHEDULES)
        schedules = {s["pipelineName"]: s for s in repository["schedules"]}
        for job_name, cron in SCHEDULES.items():
            assert schedules[job_name]["cronSchedule"] == cron
            assert schedules[job_name]["scheduleState"]["status"] == "RUNNING"
        sensors = {s["name"]: s["sensorState"]["status"] for s in repository["sensors"]}
        assert {name: sensors.get(name) for name in SENSORS} == dict.fromkeys(SENSORS, "RUNNING")

        pgdata = state / "pgdata"
        with connect(pgdata, "app") as app:
            assert app.execute("SELECT count(*) FROM users").fetchone() == (300,)
            override = "SELECT count(*) FROM global_config WHERE key = 'global_tier_override'"
            # The demo data holds an override that expired an hour ago.
            assert app.execute(override).fetchone() == (1,)

        client = DagsterGraphQLClient("127.0.0.1", port_number=dev.port)
        run_id = client.submit_job_execution("global_override_check")

        # SUCCESS means the daemon took it off the QueuedRunCoordinator's queue and ran it.
        assert wait_for_run(client, run_id, dev) == "SUCCESS", tail(dev.log)
        with connect(pgdata, "app") as app:
            assert app.execute(override).fetchone() == (0,)
        with connect(pgdata, "dagster") as dagster:
            stored = dagster.execute(
                "SELECT status FROM runs WHERE run_id = %s", (run_id,)
            ).fetchone()
        assert stored == ("SUCCESS",)

        below = stop(dev)

        assert not answers_200(dev.url("/server_info"))
        assert left_running(below) == [], "processes outlived dev"
        # The embedded PostgreSQL stopped with it.
        assert not (pgdata / "postmaster.pid").exists()

    # Run history lives in PostgreSQL: a restarted webserver and daemon still show it.
    with running_dev(state) as restarted:
        client = DagsterGraphQLClient("127.0.0.1", port_number=restarted.port)
        assert client.get_run_status(run_id).value == "SUCCESS"
        stop(restarted)


def test_dev_leaves_an_external_app_database_alone(postgres, tmp_path_factory):
    postgres.ensure_database("dev_external")
    external = postgres.url("dev_external")
    state = short_state_dir(tmp_path_factory)

    with running_dev(state, DATABASE_URL=external) as dev:
        repositories = graphql(dev, REPOSITORIES)["repositoriesOrError"]
        (repository,) = repositories["nodes"]
        assert {job["name"] for job in repository["jobs"]} >= set(SCHEDULES)

        with connect(postgres.pgdata, "dev_external") as app:
            tables = app.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            ).fetchall()
        assert tables == []
        # Dagster's own storage went to the embedded server, which holds no app database.
        with connect(state / "pgdata", "postgres") as embedded:
            databases = {
                row[0] for row in embedded.execute("SELECT datname FROM pg_database").fetchall()
            }
        assert "dagster" in databases
        assert "app" not in databases
        with connect(state / "pgdata", "dagster") as dagster:
            assert dagster.execute("SELECT to_regclass('public.runs')").fetchone() != (None,)

        stop(dev)
