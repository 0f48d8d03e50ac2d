"""The deployed topology, for real: code server, webserver and daemon as separate processes.

Each test starts what docs/deploying.md tells an operator to start
(`jobs_pipeline_tests.support.deployment`): the code location over gRPC, the webserver and the
daemon on a workspace file pointing at it, on a fresh PostgreSQL storage with the pools'
limits set, the app database only in the code server's environment. Runs are started the
way an operator starts them, through the webserver's GraphQL API (what the UI sends),
and held mid-write at a gate (`jobs_pipeline_tests.support.deployed_runs`).
"""

import itertools
import json
import subprocess
import time
from typing import Any

import pytest
from sqlalchemy import Engine

from jobs_pipeline.jobs.discipline_stats_rollup import ALL_SHARDS_TAGS, shard_of
from jobs_pipeline.jobs.discipline_stats_rollup import JOB_NAME as ROLLUP_JOB
from jobs_pipeline.jobs.global_override_check import JOB_NAME as OVERRIDE_JOB
from jobs_pipeline.jobs.tier_expiration import JOB_NAME as EXPIRATION_JOB
from jobs_pipeline_tests.support.app_data import add_expired_user, db_now
from jobs_pipeline_tests.support.deployed_runs import (
    ENDED,
    LAUNCH_MULTIPLE_RUNS,
    LAUNCH_PARTITION_BACKFILL,
    POOL,
    ROLLUP_POOL,
    RUN_DEADLINE_S,
    SCHEDULE,
    SCHEDULE_DRY_RUN,
    SETTLE_DEADLINE_S,
    backfill_params,
    close_gate,
    ended_cleanly,
    event_types,
    execution_params,
    failure_reason,
    launch_run,
    nothing_in_progress,
    open_gate,
    repository_selector,
    run_lifecycle,
    run_record,
    runs_where,
    step_window,
    wait_for,
    wait_for_end,
)
from jobs_pipeline_tests.support.deployment import DAGSTER, Deployment
from jobs_pipeline_tests.support.journal_data import make_journals

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

# The daemon's backfill loop creates a backfill's run some seconds to half a minute later.
BACKFILL_RUN_DEADLINE_S = 120
# A run's own events, in order, for a run the queue held and the daemon launched.
THROUGH_THE_QUEUE = ["RUN_ENQUEUED", "RUN_STARTING", "RUN_START", "RUN_SUCCESS"]
BACKFILL_SHARDS = ("03", "04")  # contiguous: one run under BackfillPolicy.single_run()

# -- a. a schedule's tick through the queue ----------------------------------------------------


def test_a_schedule_tick_launched_from_the_ui_goes_through_the_queue(deployment: Deployment):
    """A schedule's tick becomes a run through the queue and succeeds.

    How the tick is had quickly: Dagster 1.13 has no mutation that makes the daemon's
    scheduler tick now (it evaluates a schedule only at its cron times; `startSchedule`
    only sets when it starts counting), and our quickest schedule ticks every 5 minutes.
    What an operator can do is the UI's "Test schedule" on the schedule's page: the
    webserver evaluates the schedule in the code server for its next tick
    (`scheduleDryRun`), and "Launch all runs" submits exactly the run requests that tick
    returned (`launchMultipleRuns`), with the tags the scheduler gives its runs
    (`dagster/schedule_name`). The run then takes the same road as a scheduled one:
    queued, dequeued by the daemon under the instance's limits, executed by a run worker
    of the code server. Only the creation differs: the webserver, not the daemon's
    scheduler, submits it (the daemon's own ticks at frozen times are covered by
    test_missed_ticks.py).
    """
    schedule_name = f"{OVERRIDE_JOB}_schedule"
    selector = {**repository_selector(), "scheduleName": schedule_name}
    schedule = deployment.graphql(SCHEDULE, selector=selector)["scheduleOrError"]
    assert schedule["__typename"] == "Schedule", schedule
    # The daemon's scheduler ticks it on its own too: it is on from the start.
    assert schedule["scheduleState"]["status"] == "RUNNING", schedule

    tick = deployment.graphql(SCHEDULE_DRY_RUN, selectorData=selector, timestamp=time.time())[
        "scheduleDryRun"
    ]
    assert tick["__typename"] == "DryRunInstigationTick", tick
    evaluation = tick["evaluationResult"]
    assert evaluation["error"] is None and evaluation["skipReason"] is None, evaluation
    (request,) = evaluation["runRequests"]
    params = execution_params(
        request["jobName"] or schedule["pipelineName"],
        request["tags"],
        request["runConfigYaml"],
    )
    launched = deployment.graphql(LAUNCH_MULTIPLE_RUNS, executionParamsList=[params])[
        "launchMultipleRuns"
    ]
    assert launched["__typename"] == "LaunchMultipleRunsResult", launched
    (result,) = launched["launchMultipleRunsResult"]
    assert result["__typename"] == "LaunchRunSuccess", result

    run = wait_for_end(deployment, result["run"]["runId"])

    assert run["status"] == "SUCCESS", (failure_reason(run), deployment.process_logs())
    assert run["jobName"] == OVERRIDE_JOB
    assert run["tags"]["dagster/schedule_name"] == schedule_name, run["tags"]
    assert run["tags"]["job_lock"] == OVERRIDE_JOB, run["tags"]
    # Through the queue: enqueued by the webserver, then launched by the daemon's queue
    # (1.13 records the dequeue as RUN_STARTING: it never emits its RUN_DEQUEUED).
    assert run_lifecycle(run) == THROUGH_THE_QUEUE, run_lifecycle(run)


# -- b. a UI backfill waits for a running rollup --------------------------------------------------


def add_journals_in_backfill_shards(engine: Engine) -> None:
    """Journals whose users include some in the backfill's shards (so it writes rows too)."""
    for seed in itertools.count(1):
        users = make_journals(engine, seed=seed, user_count=40)
        if {shard_of(user) for user in users} >= set(BACKFILL_SHARDS):
            return


def held_back(deployment: Deployment, backfill_id: str) -> dict[str, Any] | None:
    """The backfill's run, once it is seen waiting for the pool, or once its step started
    (then the pool did not hold it, and the windows below overlap).

    Waiting is seen either way Dagster holds it: the daemon's queue keeps the run QUEUED
    and logs that it "is blocked by global concurrency limits" (pools at op granularity
    with the queue's default blocking), or the run starts and its step logs "Step blocked
    by limit for pool". A QUEUED status alone proves nothing: the queue may not have
    looked at the run yet.
    """
    found = runs_where(deployment, tags={"dagster/backfill": backfill_id})
    if not found:
        return None
    run = run_record(deployment, found[0]["runId"])
    queue_held = f"Run {run['runId']} is blocked by global concurrency limits" in (
        deployment.log_text("daemon")
    )
    messages = " ".join(event["message"] for event in run["events"])
    step_blocked = f"blocked by limit for pool {ROLLUP_POOL}" in messages
    if queue_held or step_blocked or "STEP_START" in event_types(run):
        return run
    return None


def test_a_ui_backfill_launched_while_a_rollup_runs_waits_for_it(
    deployment: Deployment, engine: Engine
):
    """The rollup over all shards (from the Launchpad, with the range tags the schedule
    uses) is held at the gate mid-write; meanwhile a backfill of shards 03..04 is
    launched as the UI launches it. The backfill's run is Dagster's hidden asset job
    (no `job_lock` tag): only the asset's pool can keep it from writing the same table
    at the same time. It must wait, then write; both succeed.
    """
    add_journals_in_backfill_shards(engine)
    close_gate(engine, "user_discipline_stats")

    rollup_id = launch_run(deployment, ROLLUP_JOB, ALL_SHARDS_TAGS)
    # Started and inside its step: the step holds the pool's one slot, at the gate.
    wait_for(
        deployment,
        "the rollup's step started",
        lambda: "STEP_START" in event_types(run_record(deployment, rollup_id)),
        RUN_DEADLINE_S,
    )
    launched = deployment.graphql(
        LAUNCH_PARTITION_BACKFILL, backfillParams=backfill_params(BACKFILL_SHARDS)
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    waiting = wait_for(
        deployment,
        "the backfill's run created and waiting",
        lambda: held_back(deployment, backfill_id),
        BACKFILL_RUN_DEADLINE_S,
    )
    pool = deployment.graphql(POOL, pool=ROLLUP_POOL)["instance"]["concurrencyLimit"]
    assert run_record(deployment, rollup_id)["status"] == "STARTED"
    open_gate(engine)

    rollup = wait_for_end(deployment, rollup_id)
    backfill = wait_for_end(deployment, waiting["runId"])

    assert rollup["status"] == "SUCCESS", (failure_reason(rollup), deployment.process_logs())
    assert backfill["status"] == "SUCCESS", (failure_reason(backfill), deployment.process_logs())
    assert (
        backfill["tags"]["dagster/asset_partition_range_start"],
        backfill["tags"]["dagster/asset_partition_range_end"],
    ) == (BACKFILL_SHARDS[0], BACKFILL_SHARDS[-1]), backfill["tags"]
    rollup_window, backfill_window = step_window(rollup), step_window(backfill)
    held = {
        "backfill run while the rollup ran": {
            "status": waiting["status"],
            "allPools": waiting["allPools"],
            "events": sorted(event_types(waiting)),
        },
        "pool": pool,
    }
    assert backfill_window[0] >= rollup_window[1], (
        f"the backfill's step {backfill_window} overlapped the rollup's {rollup_window} (ms):"
        f" {json.dumps(held)}"
    )


# -- c. the daemon killed and restarted mid-run ---------------------------------------------------


def test_a_daemon_killed_mid_run_and_restarted_leaves_no_run_stuck(
    deployment: Deployment, engine: Engine
):
    """SIGKILL to the daemon while a run is going and a second run of the same job waits
    in the queue behind it (`job_lock`), then the daemon started again, as a service
    manager would: both runs end (SUCCESS, or FAILURE with a reason), and nothing is
    left QUEUED, STARTING or STARTED.
    """
    with engine.begin() as connection:
        now = db_now(engine)
        for _ in range(3):
            add_expired_user(connection, now)
    close_gate(engine, "users")

    first_id = launch_run(deployment, EXPIRATION_JOB, {})
    wait_for(
        deployment,
        "the first run's step started",
        lambda: "STEP_START" in event_types(run_record(deployment, first_id)),
        RUN_DEADLINE_S,
    )
    second_id = launch_run(deployment, EXPIRATION_JOB, {})
    assert run_record(deployment, second_id)["status"] == "QUEUED"

    deployment.kill_daemon()
    assert run_record(deployment, first_id)["status"] == "STARTED"
    assert run_record(deployment, second_id)["status"] == "QUEUED"
    restarted = deployment.restart_daemon()
    deployment.wait_for_daemon(restarted)
    open_gate(engine)

    for run_id in (first_id, second_id):
        run = wait_for_end(deployment, run_id)
        assert ended_cleanly(run), (run["status"], failure_reason(run), deployment.process_logs())
    # Whatever else started meanwhile (a schedule's tick) must end too: nothing is stuck.
    wait_for(
        deployment,
        "every run ended",
        lambda: nothing_in_progress(deployment),
        SETTLE_DEADLINE_S,
    )


# -- d. Dagster's own commands against the deployment ----------------------------------------


def dagster_command(deployment: Deployment, *args: str, app: bool = False) -> str:
    """`dagster ...` as an operator types it on a deployment's host, with its environment
    (the app database's URL only where the command itself executes a run).
    """
    environment = deployment.code_environment if app else deployment.dagster_environment
    done = subprocess.run(
        [str(DAGSTER), *args],
        env=environment,
        cwd=deployment.folder,
        capture_output=True,
        text=True,
        timeout=RUN_DEADLINE_S,
        check=False,
    )
    assert done.returncode == 0, f"{done.args}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_dagster_job_launch_asset_materialize_and_job_backfill_work_on_the_deployment(
    deployment: Deployment, engine: Engine
):
    """As Dagster documents them: `dagster job launch` and `dagster job backfill` submit to
    the deployment's queue through its workspace file (the daemon launches the runs in the
    code server); `dagster asset materialize` executes in its own process on the same
    instance. Each run succeeds and shows in the deployment's history.
    """
    make_journals(engine, seed=31, user_count=30)
    workspace = str(deployment.workspace)

    dagster_command(deployment, "job", "launch", "-w", workspace, "-j", OVERRIDE_JOB)
    dagster_command(
        deployment,
        "job",
        "backfill",
        "-w",
        workspace,
        "-j",
        ROLLUP_JOB,
        "--partitions",
        ",".join(BACKFILL_SHARDS),
        "--noprompt",
    )
    dagster_command(
        deployment,
        "asset",
        "materialize",
        "-m",
        "jobs_pipeline.definitions",
        "--select",
        "user_discipline_stats",
        "--partition",
        "10",
        app=True,
    )

    def every_run_ended() -> list[dict[str, Any]] | None:
        runs = [
            run
            for run in runs_where(deployment)
            if run["jobName"] in (OVERRIDE_JOB, ROLLUP_JOB, "__ASSET_JOB")
            # Not the freshness sensor's own runs of the asset job.
            and "dagster/sensor_name" not in {tag["key"] for tag in run["tags"]}
        ]
        return runs if runs and all(run["status"] in ENDED for run in runs) else None

    runs = wait_for(deployment, "the commands' runs ended", every_run_ended, RUN_DEADLINE_S)

    by_job: dict[str, list[str]] = {}
    for run in runs:
        by_job.setdefault(run["jobName"], []).append(run["status"])
    assert by_job.get(OVERRIDE_JOB) == ["SUCCESS"], by_job
    # The backfill's shards as runs of the rollup (one per partition: `dagster job backfill`
    # launches one run per partition), and the materialization as one asset-job run.
    assert set(by_job.get(ROLLUP_JOB, [])) == {"SUCCESS"}, by_job
    assert len(by_job[ROLLUP_JOB]) == len(BACKFILL_SHARDS), by_job
    assert by_job.get("__ASSET_JOB") == ["SUCCESS"], by_job
