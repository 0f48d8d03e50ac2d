"""Upgrading the code while runs are going, as docs/deploying.md's "Upgrading the code" says.

The code server serves a release of the project from a folder of its own (`PYTHONPATH`,
as a deployment serves what it installed); a rollup and a tier-expiration run are held
mid-write at their gates; the release is replaced by a new version and the code location
reloaded, as the UI's "Reload" does. Dagster's code server starts a new server process
for the new code and lets the old one finish its runs before it exits: both runs
finish on the code they started with, every row written once, and the runs launched
after the reload get the new version.
"""

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from jobs_pipeline.jobs.discipline_stats_rollup import ALL_SHARDS_TAGS
from jobs_pipeline.jobs.discipline_stats_rollup import JOB_NAME as ROLLUP_JOB
from jobs_pipeline.jobs.global_override_check import JOB_NAME as OVERRIDE_JOB
from jobs_pipeline.jobs.tier_expiration import JOB_NAME as EXPIRATION_JOB
from jobs_pipeline_tests.support.app_data import add_expired_user, db_now
from jobs_pipeline_tests.support.deployed_runs import (
    close_gate,
    event_types,
    failure_reason,
    open_gate,
    repository_selector,
    run_record,
    wait_for,
    wait_for_end,
)
from jobs_pipeline_tests.support.deployment import REPOSITORY, Deployment, running_deployment
from jobs_pipeline_tests.support.held_runs import (
    BATCH,
    EACH_USER_ONCE,
    EXPIRED_USERS,
    START_DEADLINE_S,
    each_user_changed_once,
    gate_after_first_batch,
    launch,
    ledger_rows,
)
from jobs_pipeline_tests.support.journal_data import (
    as_records,
    expected_stats,
    make_journals,
    stored_stats,
)
from jobs_pipeline_tests.support.processes import descendants

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

OLD_DESCRIPTION = "Clear an expired global tier override (hourly)."
NEW_DESCRIPTION = "Clear an expired global tier override (hourly), as released today."

# What the UI's "Reload" button on Deployment > Code locations sends.
RELOAD = """
mutation Reload($location: String!) {
  reloadRepositoryLocation(repositoryLocationName: $location) {
    __typename
    ... on WorkspaceLocationEntry { locationOrLoadError { __typename } }
    ... on PythonError { message }
  }
}
"""

JOB_DESCRIPTION = """
query Job($selector: PipelineSelector!) {
  pipelineOrError(params: $selector) { __typename ... on Pipeline { description } }
}
"""

RUN_SNAPSHOT = """
query Snapshot($runId: ID!) {
  runOrError(runId: $runId) { ... on Run { pipelineSnapshotId } }
}
"""

SNAPSHOT_DESCRIPTION = """
query Described($id: String!) {
  pipelineSnapshotOrError(snapshotId: $id) { ... on PipelineSnapshot { description } }
}
"""


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """The project's code as a deployment installed it: a folder of its own."""
    folder = tmp_path / "release"
    shutil.copytree(
        REPOSITORY / "jobs_pipeline",
        folder / "jobs_pipeline",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return folder


@pytest.fixture
def deployment(
    tmp_path: Path, app_db_url: str, dagster_db_url: str, release: Path
) -> Iterator[Deployment]:
    with running_deployment(
        tmp_path / "deployment",
        app_db_url,
        dagster_db_url,
        code_server_env={"PYTHONPATH": str(release)},
    ) as running:
        yield running


def served_description(deployment: Deployment) -> str:
    selector = {**repository_selector(), "pipelineName": OVERRIDE_JOB}
    job = deployment.graphql(JOB_DESCRIPTION, selector=selector)["pipelineOrError"]
    assert job["__typename"] == "Pipeline", job
    return job["description"]


def run_description(deployment: Deployment, run_id: str) -> str:
    snapshot = deployment.graphql(RUN_SNAPSHOT, runId=run_id)["runOrError"]["pipelineSnapshotId"]
    found = deployment.graphql(SNAPSHOT_DESCRIPTION, id=snapshot)["pipelineSnapshotOrError"]
    return found["description"]


def code_servers(deployment: Deployment) -> list[int]:
    """The `dagster api grpc` processes under the code server: one per version it serves."""
    root = deployment.processes["code-server"].popen.pid
    found = []
    for pid in descendants(root):
        try:
            arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"api" in arguments and b"grpc" in arguments:
            found.append(pid)
    return found


def release_new_version(release: Path) -> None:
    module = release / "jobs_pipeline" / "jobs" / "global_override_check.py"
    source = module.read_text()
    assert OLD_DESCRIPTION in source
    module.write_text(source.replace(OLD_DESCRIPTION, NEW_DESCRIPTION))


def reload_code(deployment: Deployment) -> dict[str, Any]:
    answer = deployment.graphql(RELOAD, location="jobs_pipeline")["reloadRepositoryLocation"]
    assert answer["__typename"] == "WorkspaceLocationEntry", answer
    return answer


def test_a_code_upgrade_while_a_rollup_and_a_tier_expiration_run_loses_neither(
    deployment: Deployment, engine: Engine, release: Path
):
    with engine.begin() as connection:
        now = db_now(engine)
        for _ in range(EXPIRED_USERS):
            add_expired_user(connection, now)
    make_journals(engine, seed=29, user_count=60)
    gate_after_first_batch(engine)
    close_gate(engine, "user_discipline_stats")
    assert served_description(deployment) == OLD_DESCRIPTION

    expiration_id = launch(deployment, EXPIRATION_JOB, batch_size=BATCH)
    rollup_id = launch(deployment, ROLLUP_JOB, tags=ALL_SHARDS_TAGS)
    wait_for(
        deployment,
        "both runs mid-write",
        lambda: (
            ledger_rows(engine) == BATCH
            and "STEP_START" in event_types(run_record(deployment, rollup_id))
        ),
        START_DEADLINE_S,
    )
    (old_server,) = code_servers(deployment)

    release_new_version(release)
    reload_code(deployment)
    wait_for(
        deployment,
        "the new version served",
        lambda: served_description(deployment) == NEW_DESCRIPTION,
        START_DEADLINE_S,
    )
    # The old version's server stays while its runs go on.
    assert old_server in code_servers(deployment)
    assert {run_record(deployment, run_id)["status"] for run_id in (expiration_id, rollup_id)} == {
        "STARTED"
    }
    after_id = launch(deployment, OVERRIDE_JOB)

    open_gate(engine)
    expiration = wait_for_end(deployment, expiration_id)
    rollup = wait_for_end(deployment, rollup_id)
    after = wait_for_end(deployment, after_id)

    for run in (expiration, rollup, after):
        assert run["status"] == "SUCCESS", (failure_reason(run), deployment.process_logs())
    # The rollup's stats rows lock their users (foreign-key checks) while it writes, and
    # the downgrade skips rows held locked: the next run takes those, and none twice.
    next_expiration = wait_for_end(deployment, launch(deployment, EXPIRATION_JOB))
    assert next_expiration["status"] == "SUCCESS", failure_reason(next_expiration)
    assert each_user_changed_once(engine) == EACH_USER_ONCE
    assert as_records(stored_stats(engine)) == as_records(expected_stats(engine))
    assert run_description(deployment, after_id) == NEW_DESCRIPTION
    # Its runs over, the old version's server has gone.
    wait_for(
        deployment,
        "the old version's server exited",
        lambda: old_server not in code_servers(deployment),
        START_DEADLINE_S,
    )
    assert len(code_servers(deployment)) == 1
