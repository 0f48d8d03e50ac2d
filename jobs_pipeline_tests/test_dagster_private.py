"""Each call `jobs_pipeline.dagster_private` makes into Dagster's private modules, made
against the Dagster installed. An upgrade that moves or changes one fails here, by name,
instead of somewhere in a deployment.
"""

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import dagster as dg
import pytest

from jobs_pipeline import dagster_private
from jobs_pipeline.definitions import defs
from jobs_pipeline.interfaces.launching.instance import DEFINITIONS_MODULE, LOCATION_NAME
from jobs_pipeline.interfaces.launching.plans import op_config_for
from jobs_pipeline_tests.support.deadlines import deadline
from jobs_pipeline_tests.support.processes import free_port, stop_process
from jobs_pipeline_tests.support.running import temporary_instance

# Lazy loading: a code server whose code fails to load still answers, with the error.
DAGSTER_API_GRPC = [sys.executable, "-m", "dagster", "api", "grpc", "--lazy-load-user-code"]
QUEUED = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}


def test_a_run_is_queued_from_an_in_process_workspace_with_its_jobs_tags(monkeypatch):
    # Loading the run config checks the resources' EnvVars; nothing connects.
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    job = defs.resolve_job_def("global_override_check")
    run_config = op_config_for(job, dry_run=True)
    with (
        temporary_instance(overrides={"run_coordinator": QUEUED}) as instance,
        dagster_private.in_process_workspace(
            instance, DEFINITIONS_MODULE, LOCATION_NAME
        ) as workspace,
    ):
        run_id = dagster_private.submit_run(
            instance, workspace, LOCATION_NAME, job.name, run_config, {"who": "test"}
        )
        run = instance.get_run_by_id(run_id)

    assert run is not None and run.status == dg.DagsterRunStatus.QUEUED
    assert run.job_name == "global_override_check"
    assert run.run_config == run_config
    assert run.tags["who"] == "test"
    assert run.tags["dagster/priority"] == job.tags["dagster/priority"]
    assert run.remote_job_origin is not None
    assert run.remote_job_origin.location_name == LOCATION_NAME


@dg.op
def interrupted_op() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)  # the interrupt ends the step long before this


@dg.job
def interrupted_job() -> None:
    interrupted_op()


@dg.op
def failing_op() -> None:
    raise RuntimeError("broken")


@dg.job
def failing_job() -> None:
    failing_op()


def run_failures(job: dg.JobDefinition) -> list[bool]:
    with temporary_instance() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        events = result.all_events
    return [
        dagster_private.was_unexpected_termination(event)
        for event in events
        if event.event_type == dg.DagsterEventType.RUN_FAILURE
    ]


@pytest.mark.processes
def test_an_interrupted_run_is_told_from_one_whose_code_failed():
    assert run_failures(interrupted_job) == [True]
    assert run_failures(failing_job) == [False]


def test_a_worker_health_answer_is_dagsters_own():
    running = dagster_private.worker_health(True, "alive")
    failed = dagster_private.worker_health(False, "gone")
    assert (running.status.value, running.msg) == ("RUNNING", "alive")
    assert (failed.status.value, failed.msg) == ("FAILED", "gone")


def test_a_launchers_answer_settles_the_question_only_when_the_worker_ended_or_is_gone():
    from dagster._core.launcher import CheckRunHealthResult, WorkerStatus

    settled = {
        status.value: dagster_private.worker_health_settled(CheckRunHealthResult(status))
        for status in WorkerStatus
    }
    assert settled == {
        "RUNNING": False,
        "NOT_FOUND": True,
        "FAILED": True,
        "SUCCESS": True,
        "UNKNOWN": False,
    }


def test_the_code_server_tag_is_the_one_dagsters_launcher_writes():
    assert dagster_private.CODE_SERVER_TAG == ".dagster/grpc_info"


def test_cron_ticks_read_the_cron_as_dagsters_scheduler_does():
    start = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)  # a Tuesday
    ticks = dagster_private.cron_ticks(start, "0 2 * * 0", "UTC")
    assert [next(ticks), next(ticks)] == [
        datetime(2026, 12, 6, 2, 0, tzinfo=UTC),
        datetime(2026, 12, 13, 2, 0, tzinfo=UTC),
    ]


def serve_code(module: str, port: int, tmp_path) -> subprocess.Popen:
    log = (tmp_path / f"code-server-{port}.log").open("w")
    return subprocess.Popen(
        [*DAGSTER_API_GRPC, "-m", module, "-h", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )


def answer_of(port: int, deadline_s: float = 120) -> str | None:
    """The code server's load answer, once it answers at all."""
    give_up = time.monotonic() + deadline(deadline_s)
    while True:
        try:
            return dagster_private.code_server_load_error("127.0.0.1", port)
        except Exception:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.5)


def test_a_state_id_the_ui_sends_gives_its_instigators_origin_id():
    """The form the UI's stop mutations send (seen in test_door.py): origin::selector."""
    assert dagster_private.instigator_origin_id("3f2a9c::b71e04") == "3f2a9c"
    assert dagster_private.instigator_origin_id("3f2a9c") == "3f2a9c"


@pytest.mark.processes
def test_a_code_server_says_whether_it_loads_the_code(tmp_path):
    (tmp_path / "broken_code.py").write_text("raise ImportError('no such thing here')\n")
    good, broken = free_port(), free_port()
    servers = [
        serve_code(DEFINITIONS_MODULE, good, tmp_path),
        serve_code("broken_code", broken, tmp_path),
    ]
    try:
        assert answer_of(good) is None
        assert "no such thing here" in (answer_of(broken) or "")
    finally:
        for server in servers:
            stop_process(server)
    with pytest.raises(Exception, match="Could not reach"):
        dagster_private.code_server_load_error("127.0.0.1", free_port())
