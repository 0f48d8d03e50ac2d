"""After a stop (Ctrl-C or SIGTERM), `make dev` and the CLI leave nothing running.

Every process a command starts inherits a tag of this test's own in its environment,
so what it leaves behind is found wherever it went: the embedded PostgreSQL that
`pg_ctl` detached, Dagster's webserver, daemon and code servers in their own session.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import Engine, func, select, text

from jobs_pipeline.definitions import defs
from jobs_pipeline.monitoring.monitoring import alert_redelivery_sensor
from jobs_pipeline.resources.alerting import AlertChannels
from jobs_pipeline.resources.database import writer_lock_key
from jobs_pipeline.resources.mail import Mailer
from jobs_pipeline.storage.embedded import INSTANCE_CONFIG
from jobs_pipeline_tests.support.app_data import add_expired_user, db_now, user_row
from jobs_pipeline_tests.support.deadlines import as_a_terminals_job, deadline
from jobs_pipeline_tests.support.dev_server import (
    SHUTDOWN_DEADLINE_S,
    STARTUP_DEADLINE_S,
    short_state_dir,
    stop_orphaned_postgres,
)
from jobs_pipeline_tests.support.leftovers import Leftover, processes_with
from jobs_pipeline_tests.support.processes import (
    JOBS_PIPELINE,
    cli_environment,
    free_port,
    tail,
    wait_for_url,
)
from jobs_pipeline_tests.support.running import evaluate_failure_alert

pytestmark = pytest.mark.slow

TAG_VARIABLE = "JOBS_PIPELINE_TEST_TAG"
INTERRUPTED = 130  # a shell's code for a command stopped by SIGINT: 128 + 2


@pytest.fixture
def channels(smtp_server, webhook_server) -> AlertChannels:
    return AlertChannels(
        mailer=Mailer(host=smtp_server.host, port=smtp_server.port, sender="dagster@example.com"),
        email_to="ops@example.com",
        webhook_url=webhook_server.url,
    )


def tagged_environment(state_dir: Path) -> tuple[dict[str, str], str]:
    tag = uuid.uuid4().hex
    return cli_environment(state_dir, **{TAG_VARIABLE: tag}), tag


def left_behind(tag: str, deadline_s: float = 60) -> list[Leftover]:
    """The tagged processes still alive once `deadline_s` has passed (none: at once)."""
    give_up = time.monotonic() + deadline(deadline_s)
    while (left := processes_with(TAG_VARIABLE, tag)) and time.monotonic() < give_up:
        time.sleep(0.5)
    return left


def kill_whatever_is_left(tag: str, pgdata: Path) -> None:
    """So that a failing test leaves nothing either (the session's guard would say so)."""
    stop_orphaned_postgres(pgdata)
    for leftover in processes_with(TAG_VARIABLE, tag):
        with contextlib.suppress(ProcessLookupError):
            os.kill(leftover.pid, signal.SIGKILL)


def start_cli(
    args: list[str], environment: dict[str, str], cwd: Path, log: Path
) -> subprocess.Popen:
    """The installed command in a session of its own (as a terminal's job), output to `log`."""
    with log.open("wb") as output:
        return subprocess.Popen(
            [str(JOBS_PIPELINE), *args],
            env=environment,
            cwd=cwd,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=as_a_terminals_job,
        )


def send_stop(process: subprocess.Popen, how: str) -> None:
    if how == "ctrl-c":
        # A terminal's Ctrl-C signals its whole foreground process group.
        os.killpg(process.pid, signal.SIGINT)
    else:
        # `kill PID`, a service manager, a CI runner's timeout: the one process only.
        process.send_signal(signal.SIGTERM)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_make_dev_leaves_nothing_running_after_a_stop(how, project_root, tmp_path_factory):
    state = short_state_dir(tmp_path_factory)
    environment, tag = tagged_environment(state)
    port = free_port()
    log = state.parent / "make-dev.log"
    with log.open("wb") as output:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "-C", str(project_root), "dev", f"PORT={port}"],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=as_a_terminals_job,
        )
    try:
        wait_for_url(f"http://127.0.0.1:{port}/server_info", make, log, STARTUP_DEADLINE_S)
        started = [leftover.command for leftover in processes_with(TAG_VARIABLE, tag)]
        assert any("postgres" in command for command in started), started
        assert any("dagster._daemon run" in command for command in started), started
        assert any("dagster_webserver" in command for command in started), started

        send_stop(make, how)
        make.wait(timeout=SHUTDOWN_DEADLINE_S)

        assert left_behind(tag) == [], tail(log)
        assert not (state / "pgdata" / "postmaster.pid").exists(), tail(log)
    finally:
        kill_whatever_is_left(tag, state / "pgdata")


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_cli_run_stopped_midway_is_canceled_rolled_back_and_leaves_nothing_running(
    how,
    app_db_url,
    engine,
    tmp_path,
    postgres,
    project_root,
    monkeypatch,
    channels,
    smtp_server,
    webhook_server,
):
    """The run is held midway, waiting for another writer of `users`, when it is stopped."""
    now = db_now(engine)
    with engine.begin() as connection:
        expired = add_expired_user(connection, now)
    environment, tag = tagged_environment(tmp_path / "state")
    environment["DATABASE_URL"] = app_db_url
    # An instance with a history (no daemon: the CLI runs the job in its own process).
    dagster_db = f"dagster_stop_{uuid.uuid4().hex[:8]}"
    postgres.ensure_database(dagster_db)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(INSTANCE_CONFIG, home / "dagster.yaml")
    storage = {
        "DAGSTER_HOME": str(home),
        "DAGSTER_POSTGRES_URL": postgres.url(dagster_db, "postgresql+psycopg2"),
    }
    environment.update(storage)
    log = tmp_path / "run.log"
    with engine.connect() as other_writer:
        other_writer.execute(select(func.pg_advisory_lock(*writer_lock_key("users"))))
        other_writer.commit()
        try:
            cli = start_cli(["run", "tier-expiration"], environment, tmp_path, log)
            wait_for_text(log, "which is writing users", cli)

            send_stop(cli, how)
            returncode = cli.wait(timeout=SHUTDOWN_DEADLINE_S)
        finally:
            other_writer.execute(select(func.pg_advisory_unlock(*writer_lock_key("users"))))
            other_writer.commit()
            kill_whatever_is_left(tag, tmp_path / "no-embedded-server")

    said = tail(log)
    assert returncode == INTERRUPTED, said
    assert "stopped midway" in said, said
    assert said.rstrip().endswith("jobs-pipeline: stopped"), said
    assert left_behind(tag) == [], said
    assert run_sessions(engine) == 0
    assert user_row(engine, expired)["tier"] == "premium"
    # Stopped on purpose, not failed: canceled in the history, and no alert.
    for variable, value in storage.items():
        monkeypatch.setenv(variable, value)
    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs(filters=dg.RunsFilter(job_name="tier_expiration"))
        assert run.status == dg.DagsterRunStatus.CANCELED
        evaluate_failure_alerts(instance, run, channels)
    assert smtp_server.mailbox.received == []
    assert webhook_server.posts == []


def evaluate_failure_alerts(
    instance: dg.DagsterInstance, run: dg.DagsterRun, channels: AlertChannels
) -> None:
    """The failure alert on the run's failure event, and the alerts' catch-up."""
    evaluate_failure_alert(instance, run, channels)
    with dg.build_sensor_context(
        instance=instance, resources={"alerts": channels}, definitions=defs
    ) as context:
        alert_redelivery_sensor(context)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_the_embedded_postgres_a_cli_run_started_stops_with_it(how, tmp_path_factory):
    state = short_state_dir(tmp_path_factory)
    environment, tag = tagged_environment(state)
    log = state.parent / "run.log"
    try:
        cli = start_cli(["run", "discipline-stats-rollup"], environment, state.parent, log)
        # The run's id is said once the embedded server is up and the run about to start.
        wait_for_text(log, "Run ", cli)
        assert (state / "pgdata" / "postmaster.pid").exists()

        send_stop(cli, how)
        returncode = cli.wait(timeout=SHUTDOWN_DEADLINE_S)

        said = tail(log)
        # Stopped midway, or (on a fast machine) just after the run ended: either way,
        # nothing of it is left.
        assert returncode in (INTERRUPTED, 0), said
        assert "Traceback" not in said, said
        assert left_behind(tag) == [], said
        assert not (state / "pgdata" / "postmaster.pid").exists(), said
    finally:
        kill_whatever_is_left(tag, state / "pgdata")


def run_sessions(engine: Engine) -> int:
    """The database sessions of runs (named after their run) still connected."""
    with engine.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name LIKE 'jobs_pipeline run %'"
                )
            ).scalar_one()
        )


def wait_for_text(log: Path, text: str, process: subprocess.Popen) -> None:
    give_up = time.monotonic() + deadline(STARTUP_DEADLINE_S)
    while time.monotonic() < give_up:
        if text in log.read_text(errors="replace"):
            return
        assert process.poll() is None, f"it exited before saying {text!r}:\n{tail(log)}"
        time.sleep(0.1)
    pytest.fail(f"it did not say {text!r} within {STARTUP_DEADLINE_S} s:\n{tail(log)}")


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_cli_command_stopped_while_its_embedded_postgres_starts_leaves_it_stopped(
    how, tmp_path_factory
):
    state = short_state_dir(tmp_path_factory)
    environment, tag = tagged_environment(state)
    log = state.parent / "run.log"
    pid_file = state / "pgdata" / "postmaster.pid"
    try:
        cli = start_cli(["run", "global-override-check"], environment, state.parent, log)
        # Stopped while `pg_ctl start` runs: the server is coming up, and pgserver does not
        # know it yet (its own exit handler stops only a server it saw start).
        give_up = time.monotonic() + deadline(STARTUP_DEADLINE_S)
        while not starting_server(tag) and time.monotonic() < give_up:
            assert cli.poll() is None, tail(log)
            time.sleep(0.005)
        assert starting_server(tag), tail(log)

        send_stop(cli, how)
        returncode = cli.wait(timeout=SHUTDOWN_DEADLINE_S)

        said = tail(log)
        assert returncode == INTERRUPTED, said
        assert left_behind(tag) == [], said
        assert not pid_file.exists(), said
    finally:
        kill_whatever_is_left(tag, state / "pgdata")


def starting_server(tag: str) -> bool:
    return any("pg_ctl" in found.command for found in processes_with(TAG_VARIABLE, tag))
