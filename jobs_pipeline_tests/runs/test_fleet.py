"""Runs on a fleet: whole runs executed by Celery workers pulling from one Redis queue,
the deployment set up with `jobs-pipeline setup --runs-in fleet` and each worker started
as docs/deploying.md starts it.

Two workers with names of their own stand for two hosts. The one executing a
tier-expiration over 300,000 expired users is killed whole (SIGKILL to its every process)
after the run's first batch: the run fails within 3 minutes, is alerted once, leaves its
slot and writer lock free, and the next run, on the other worker, downgrades everyone
else: every user once, one ledger row and one email each.
"""

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from jobs_pipeline.jobs.tier_expiration import JOB_NAME as EXPIRATION_JOB
from jobs_pipeline_tests.support.deadlines import deadline, wait_until
from jobs_pipeline_tests.support.deployed_runs import (
    failure_reason,
    open_gate,
    wait_for,
)
from jobs_pipeline_tests.support.deployment import BIN, REPOSITORY, Deployment, running_deployment
from jobs_pipeline_tests.support.held_runs import (
    ALL_OF_THEM,
    MANY_BATCH,
    MANY_USERS,
    START_DEADLINE_S,
    add_expired_users,
    gate_after_first_batch,
    launch,
    ledger_rows,
    step_process,
    the_next_run_did_the_rest,
)
from jobs_pipeline_tests.support.processes import free_port
from jobs_pipeline_tests.support.receivers import WebhookServer

pytestmark = [pytest.mark.fleet, pytest.mark.deployment, pytest.mark.slow]

REDIS_SERVER = "/usr/bin/redis-server"
WORKERS = ("worker-a", "worker-b")
QUEUE = "jobs-pipeline"


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """Debian's redis-server on loopback, keeping nothing on disk."""
    port = free_port()
    with (tmp_path / "redis.log").open("wb") as log:
        server = subprocess.Popen(
            [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(port), "--save", ""],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: redis_answers(port), 30, "redis-server answered")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=deadline(30))


def worker_argv(name: str) -> list[str]:
    """A fleet worker as docs/deploying.md starts one: one run at a time."""
    return [
        *(str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app"),
        *("-y", str(REPOSITORY / "deploy" / "fleet" / "worker.yaml"), "-q", QUEUE),
        *("-n", f"{name}@%h", "--", "--concurrency=1"),
    ]


@pytest.fixture
def fleet(
    tmp_path: Path,
    app_db_url: str,
    dagster_db_url: str,
    webhook_server: WebhookServer,
    redis_url: str,
) -> Iterator[Deployment]:
    with running_deployment(
        tmp_path,
        app_db_url,
        dagster_db_url,
        runs_in="fleet",
        CELERY_BROKER_URL=redis_url,
        ALERT_WEBHOOK_URL=webhook_server.url,
    ) as deployment:
        # `dagster-celery worker start` calls `celery` by name.
        path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        for name in WORKERS:
            deployment.start(name, worker_argv(name), {**deployment.code_environment, "PATH": path})
        for name in WORKERS:
            deployment.wait_until(
                f"{name} ready", lambda name=name: " ready." in deployment.log_text(name)
            )
        yield deployment


def worker_of(deployment: Deployment, pid: int) -> str:
    """The worker whose process group holds `pid` (each worker runs in a session of its own)."""
    group = os.getpgid(pid)
    (name,) = [name for name in WORKERS if deployment.processes[name].popen.pid == group]
    return name


def test_a_worker_killed_whole_mid_run_fails_its_run_and_the_other_worker_does_the_rest(
    fleet: Deployment, engine: Engine, webhook_server: WebhookServer
):
    add_expired_users(engine, MANY_USERS)
    gate_after_first_batch(engine, MANY_BATCH)

    dead_id = launch(fleet, EXPIRATION_JOB, **ALL_OF_THEM)
    holder = worker_of(fleet, step_process(fleet, dead_id))
    wait_for(
        fleet,
        "the first batch committed",
        lambda: ledger_rows(engine) == MANY_BATCH,
        START_DEADLINE_S,
    )
    fleet.kill(holder)  # the whole worker, as when its host goes down
    # The killed worker's session finishes the statement it was in, then rolls it back.
    open_gate(engine)
    next_id = launch(fleet, EXPIRATION_JOB, **ALL_OF_THEM)

    dead, _ = the_next_run_did_the_rest(fleet, engine, webhook_server, dead_id, next_id, MANY_USERS)
    assert "worker process is gone" in failure_reason(dead), failure_reason(dead)
    (survivor,) = [name for name in WORKERS if name != holder]
    assert worker_of(fleet, step_process(fleet, next_id)) == survivor
