"""Runs whose process dies, on the deployed topology: nothing stays stuck, someone hears.
(And a run left waiting behind a held slot is heard of too.)

Each test starts the processes docs/deploying.md starts (code server, webserver,
daemon; `jobs_pipeline_tests.support.deployment`), holds a real run mid-write at a gate, then
does what production does to it: SIGKILL the process executing its steps, SIGKILL the
code server's whole process group, restart Dagster's storage PostgreSQL. Each time:

- the dead run ends FAILURE and is alerted once (a real webhook receiver);
- `jobs-pipeline doctor` names the dead run while the daemon cannot act (paused: down,
  hung or starved), and is clean once it has;
- the next run of the job, started right away, waits for nothing left behind (its
  `job_lock`, its pool's slot, its writer lock), and finishes the work within 3
  minutes of the fault, every row changed exactly once: one downgrade, one ledger row
  and one email per user; every stats row equal to the oracle.
"""

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from jobs_pipeline.deployment.doctor import RECHECK_GRACE_SECONDS
from jobs_pipeline.jobs.discipline_stats_rollup import ALL_SHARDS_TAGS
from jobs_pipeline.jobs.discipline_stats_rollup import JOB_NAME as ROLLUP_JOB
from jobs_pipeline.jobs.tier_expiration import JOB_NAME as EXPIRATION_JOB
from jobs_pipeline.storage.embedded import EmbeddedPostgres, start_embedded_postgres
from jobs_pipeline.tags import ALERT_WAITING_AFTER_TAG
from jobs_pipeline_tests.support.app_data import add_expired_user, db_now
from jobs_pipeline_tests.support.deployed_runs import (
    ENDED,
    LAUNCH_PARTITION_BACKFILL,
    backfill_params,
    close_gate,
    event_types,
    failure_reason,
    open_gate,
    repository_selector,
    run_record,
    runs_where,
    wait_for,
    wait_for_status,
)
from jobs_pipeline_tests.support.deployment import Deployment, running_deployment
from jobs_pipeline_tests.support.dev_server import stop_orphaned_postgres
from jobs_pipeline_tests.support.held_runs import (
    ALERT_DEADLINE_S,
    BATCH,
    EACH_USER_ONCE,
    EXPIRED_USERS,
    RECOVERY_DEADLINE_S,
    START_DEADLINE_S,
    WRITES_USERS,
    assert_alerted_once,
    each_user_changed_once,
    failure_alerts,
    gate_after_first_batch,
    held_at_gate,
    launch,
    ledger_rows,
    slots_claimed,
    step_process,
    still_paying,
    writer_locks_held,
)
from jobs_pipeline_tests.support.journal_data import (
    as_records,
    expected_stats,
    make_journals,
    stored_stats,
)
from jobs_pipeline_tests.support.processes import run_cli
from jobs_pipeline_tests.support.receivers import WebhookServer

pytestmark = [pytest.mark.deployment, pytest.mark.slow]


@pytest.fixture
def deployment(
    tmp_path: Path, app_db_url: str, dagster_db_url: str, webhook_server: WebhookServer
) -> Iterator[Deployment]:
    with running_deployment(
        tmp_path, app_db_url, dagster_db_url, ALERT_WEBHOOK_URL=webhook_server.url
    ) as running:
        yield running


# -- the runs ---------------------------------------------------------------------------------


def wait_until(deployment: Deployment, what: str, ready: Any, deadline_s: float) -> Any:
    return wait_for(deployment, what, ready, deadline_s)


def answers(deployment: Deployment, run_id: str) -> bool:
    """The webserver reads the run from its storage again."""
    try:
        run_record(deployment, run_id)
    except OSError:  # urllib's HTTPError and URLError among them
        return False
    return True


# `doctor` is a whole command (Dagster imported, the instance read): asked this often, not
# back to back, it leaves the machine to the deployment it watches.
DOCTOR_POLL_S = 3


def doctor(deployment: Deployment) -> tuple[int, str]:
    done = run_cli("doctor", env=deployment.code_environment, cwd=deployment.folder)
    return done.returncode, done.stdout + done.stderr


def doctor_names(deployment: Deployment, run_id: str) -> str | None:
    """doctor's report, once it fails naming the run (what the fault looks like now)."""
    status, report = doctor(deployment)
    return report if status == 1 and run_id in report else None


def wait_for_doctor_clean(deployment: Deployment) -> str:
    def clean() -> str | None:
        status, report = doctor(deployment)
        return report if status == 0 else None

    return wait_for(
        deployment, "doctor reported a healthy deployment", clean, ALERT_DEADLINE_S, DOCTOR_POLL_S
    )


RUN_START = """
query RunStart($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { startTime } }
}
"""


def doctor_names_the_dead_run(deployment: Deployment, dead_id: str) -> str:
    """doctor's report naming the dead run; called with the daemon paused since the fault.

    With the daemon running, Dagster fails a dead run within seconds and frees its slot
    15 s later: a state doctor, a whole command, reads or misses by chance. Paused, the
    daemon acts on nothing, as when it is down, hung or starved: the run stays STARTED
    with its worker gone, which doctor reports once the run is past its grace.
    """
    started = deployment.graphql(RUN_START, runId=dead_id)["runOrError"]["startTime"]
    past_grace = started + RECHECK_GRACE_SECONDS
    wait_until(deployment, "the dead run past doctor's grace", lambda: time.time() > past_grace, 60)
    return wait_for(
        deployment,
        "doctor named the dead run",
        lambda: doctor_names(deployment, dead_id),
        START_DEADLINE_S,
        DOCTOR_POLL_S,
    )


def recovered(deployment: Deployment, dead_id: str, next_id: str) -> dict[str, Any]:
    """Waits for the next run to succeed within the 3 minutes since the daemon could act
    on the fault; returns the dead run (ended FAILURE).
    """
    finished = wait_for_status(deployment, next_id, ENDED, RECOVERY_DEADLINE_S)
    assert finished["status"] == "SUCCESS", (failure_reason(finished), deployment.process_logs())
    dead = run_record(deployment, dead_id)
    assert dead["status"] == "FAILURE", (dead["status"], deployment.process_logs())
    return dead


# -- 1. the process executing a run's steps, killed ------------------------------------------


def test_a_killed_step_process_frees_its_table_and_the_next_run_finishes_the_work(
    deployment: Deployment, engine: Engine, webhook_server: WebhookServer
):
    with engine.begin() as connection:
        now = db_now(engine)
        for _ in range(EXPIRED_USERS):
            add_expired_user(connection, now)
    gate_after_first_batch(engine)

    dead_id = launch(deployment, EXPIRATION_JOB, batch_size=BATCH)
    pid = step_process(deployment, dead_id)
    wait_until(
        deployment,
        "the first batch committed",
        lambda: ledger_rows(engine) == BATCH,
        START_DEADLINE_S,
    )

    with deployment.paused("daemon"):
        os.kill(pid, signal.SIGKILL)
        # The killed process's session finishes the statement it was in, then rolls it back.
        open_gate(engine)
        next_id = launch(deployment, EXPIRATION_JOB, batch_size=BATCH)
        report = doctor_names_the_dead_run(deployment, dead_id)
    recovered(deployment, dead_id, next_id)
    assert each_user_changed_once(engine) == EACH_USER_ONCE
    assert still_paying(engine) == 0
    assert slots_claimed(deployment, WRITES_USERS) == []
    assert writer_locks_held(engine) == 0
    alert = assert_alerted_once(deployment, webhook_server, dead_id)
    # The alert says how the process died, not only that the run was failed from outside.
    assert "was terminated by signal 9 (SIGKILL)" in alert["text"], alert["text"]
    assert wait_for_doctor_clean(deployment), report


# -- 2. the code server's whole process group, killed mid-rollup -------------------------------


def test_a_code_server_group_killed_mid_rollup_fails_the_run_and_the_next_one_writes_every_row(
    deployment: Deployment, engine: Engine, webhook_server: WebhookServer
):
    make_journals(engine, seed=19, user_count=80)
    close_gate(engine, "user_discipline_stats")

    dead_id = launch(deployment, ROLLUP_JOB, tags=ALL_SHARDS_TAGS)
    wait_until(
        deployment,
        "the rollup's step started",
        lambda: "STEP_START" in event_types(run_record(deployment, dead_id)),
        START_DEADLINE_S,
    )

    with deployment.paused("daemon"):
        deployment.kill("code-server")  # the server, its gRPC child and the run's worker
        killed_epoch = time.time()
        open_gate(engine)
        deployment.restart("code-server")  # as a service manager would
        deployment.wait_until("the code server answered again", deployment.code_server_healthy)
        deployment.wait_until(
            "the webserver loaded the restarted code server's jobs",
            lambda: deployment.location_loaded(since=killed_epoch),
        )
        next_id = launch(deployment, ROLLUP_JOB, tags=ALL_SHARDS_TAGS)
        report = doctor_names_the_dead_run(deployment, dead_id)
    dead = recovered(deployment, dead_id, next_id)
    assert "worker process is gone" in failure_reason(dead), failure_reason(dead)
    assert as_records(stored_stats(engine)) == as_records(expected_stats(engine))
    assert slots_claimed(deployment, "writes_user_discipline_stats") == []
    assert writer_locks_held(engine) == 0
    assert_alerted_once(deployment, webhook_server, dead_id)
    assert wait_for_doctor_clean(deployment), report


# -- 3. Dagster's storage PostgreSQL restarted mid-run -----------------------------------------


@pytest.fixture
def storage_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """Dagster's storage on a server of its own, which the test restarts (the app's stays up)."""
    server = start_embedded_postgres(tmp_path / "storage", cleanup_mode="stop")
    server.ensure_database("dagster")
    yield server
    server.server.cleanup()
    stop_orphaned_postgres(server.pgdata)


def test_a_storage_restart_mid_run_leaves_nothing_stuck_and_every_user_downgraded_once(
    tmp_path: Path,
    app_db_url: str,
    engine: Engine,
    storage_postgres: EmbeddedPostgres,
    webhook_server: WebhookServer,
):
    with engine.begin() as connection:
        now = db_now(engine)
        for _ in range(EXPIRED_USERS):
            add_expired_user(connection, now)
    gate_after_first_batch(engine)
    storage_url = storage_postgres.url("dagster", "postgresql+psycopg2")
    with running_deployment(
        tmp_path / "deployment", app_db_url, storage_url, ALERT_WEBHOOK_URL=webhook_server.url
    ) as deployment:
        first_id = launch(deployment, EXPIRATION_JOB, batch_size=BATCH)
        wait_until(
            deployment,
            "the first batch committed",
            lambda: ledger_rows(engine) == BATCH,
            START_DEADLINE_S,
        )
        # The next batch's statement in flight, past the events the run writes between
        # batches: else the storage may go before one of them, and no batch follows.
        wait_until(
            deployment,
            "the second batch held at the gate",
            lambda: held_at_gate(engine),
            START_DEADLINE_S,
        )

        # Down while the run works: its next batch commits in the app database, and the
        # run's events have nowhere to go; then up again on the same folder.
        storage_postgres.server.cleanup()
        down_status, down_report = doctor(deployment)
        open_gate(engine)
        wait_until(
            deployment,
            "a batch committed while the storage was down",
            lambda: ledger_rows(engine) > BATCH,
            START_DEADLINE_S,
        )
        restarted = start_embedded_postgres(storage_postgres.pgdata, cleanup_mode="stop")
        restarted_at = time.monotonic()
        # The webserver answers 500 for some seconds after its storage came back.
        wait_until(
            deployment,
            "the webserver answered again",
            lambda: answers(deployment, first_id),
            START_DEADLINE_S,
        )
        first = wait_for_status(deployment, first_id, ENDED, RECOVERY_DEADLINE_S)
        next_id = launch(deployment, EXPIRATION_JOB, batch_size=BATCH)
        finished = wait_for_status(
            deployment,
            next_id,
            ENDED,
            RECOVERY_DEADLINE_S - (time.monotonic() - restarted_at),
        )

        assert finished["status"] == "SUCCESS", (
            failure_reason(finished),
            deployment.process_logs(),
        )
        assert each_user_changed_once(engine) == EACH_USER_ONCE
        assert slots_claimed(deployment, WRITES_USERS) == []
        assert writer_locks_held(engine) == 0
        # The run either rode the outage out, or its worker died of it and it failed.
        if first["status"] == "FAILURE":
            assert_alerted_once(deployment, webhook_server, first_id)
        else:
            assert first["status"] == "SUCCESS", first["status"]
            assert failure_alerts(webhook_server, first_id) == []
        assert down_status == 1 and "Dagster's storage: the instance in" in down_report, down_report
        assert "Traceback" not in down_report, down_report
        assert wait_for_doctor_clean(deployment)
    restarted.server.cleanup()


# -- 4. a run left waiting behind a held slot -------------------------------------------------

SENSOR_TICKS = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { ticks(limit: 5) { timestamp status } } }
  }
}
"""


def sensor_evaluated_since(deployment: Deployment, sensor: str, since: float) -> bool:
    selector = {**repository_selector(), "sensorName": sensor}
    found = deployment.graphql(SENSOR_TICKS, selector=selector)["sensorOrError"]
    assert found["__typename"] == "Sensor", found
    ticks = found["sensorState"]["ticks"]
    return any(t["timestamp"] > since and t["status"] != "STARTED" for t in ticks)


def waiting_alerts(webhook: WebhookServer) -> list[dict[str, Any]]:
    return [post for post in webhook.posts if post["kind"] == "waiting"]


def test_a_run_queued_behind_a_held_slot_alerts_once_naming_the_pool_and_its_holder(
    deployment: Deployment, engine: Engine, webhook_server: WebhookServer
):
    """The rollup holds its table's pool at the gate; a backfill of two shards, launched
    from the UI with a waiting limit of a few seconds (the tag an operator may add; each
    job's own limit is 15 minutes), waits behind it: one alert, naming the pool and the
    rollup's run, and doctor says the same; nothing more once the run has gone on.
    """
    make_journals(engine, seed=23, user_count=40)
    close_gate(engine, "user_discipline_stats")
    holder_id = launch(deployment, ROLLUP_JOB, tags=ALL_SHARDS_TAGS)
    wait_until(
        deployment,
        "the rollup's step started",
        lambda: "STEP_START" in event_types(run_record(deployment, holder_id)),
        START_DEADLINE_S,
    )
    params = backfill_params(("03", "04"), **{ALERT_WAITING_AFTER_TAG: "5"})
    launched = deployment.graphql(LAUNCH_PARTITION_BACKFILL, backfillParams=params)
    backfill_id = launched["launchPartitionBackfill"]["backfillId"]
    waiting_id = wait_until(
        deployment,
        "the backfill's run created",
        lambda: next(
            (r["runId"] for r in runs_where(deployment, tags={"dagster/backfill": backfill_id})),
            None,
        ),
        START_DEADLINE_S,
    )

    (alert,) = wait_until(
        deployment,
        "the waiting run alerted",
        lambda: waiting_alerts(webhook_server),
        ALERT_DEADLINE_S,
    )
    report = wait_for(
        deployment,
        "doctor named the waiting run",
        lambda: doctor_names(deployment, waiting_id),
        START_DEADLINE_S,
        DOCTOR_POLL_S,
    )
    alerted_at = time.time()
    wait_until(
        deployment,
        "the waiting-run sensor evaluated again",
        lambda: sensor_evaluated_since(deployment, "waiting_run_sensor", alerted_at),
        ALERT_DEADLINE_S,
    )
    open_gate(engine)
    done = wait_for_status(deployment, waiting_id, ENDED, RECOVERY_DEADLINE_S)

    assert alert["run_id"] == waiting_id, alert
    assert "pool writes_user_discipline_stats" in alert["text"], alert["text"]
    assert holder_id in alert["text"], alert["text"]
    assert waiting_alerts(webhook_server) == [alert]
    assert "pool writes_user_discipline_stats" in report and holder_id in report, report
    assert done["status"] == "SUCCESS", failure_reason(done)
