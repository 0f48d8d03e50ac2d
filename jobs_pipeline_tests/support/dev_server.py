"""`jobs-pipeline dev` started for a test: always stopped, all of it, on the way out."""

import contextlib
import json
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

from jobs_pipeline.storage.embedded import stop_server_on
from jobs_pipeline_tests.support.deadlines import deadline
from jobs_pipeline_tests.support.processes import (
    JOBS_PIPELINE,
    alive,
    cli_environment,
    descendants,
    free_port,
    kill_groups,
    process_groups,
    tail,
    wait_for_url,
)

STARTUP_DEADLINE_S = deadline(300)
RUN_DEADLINE_S = deadline(300)
SHUTDOWN_DEADLINE_S = deadline(180)


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
    """Stops whatever server still runs on `pgdata`, and waits until it has: pg_ctl
    detaches the embedded server, so it outlives a killed `dev`, and a server a test
    started again has no handle of the test's fixture.
    """
    stop_server_on(pgdata)


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
    give_up = time.monotonic() + deadline(deadline_s)
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
    give_up = time.monotonic() + deadline(RUN_DEADLINE_S)
    status = None
    while time.monotonic() < give_up:
        status = client.get_run_status(run_id).value
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(1)
    pytest.fail(f"run {run_id} still {status} after {RUN_DEADLINE_S} s:\n{tail(dev.log)}")
