"""Dagster's own commands in the project's root, as in any Dagster project.

With nothing set (no DAGSTER_HOME, no DATABASE_URL), `dagster definitions validate`,
`dg check defs` and `dg list defs` pass, and `dg dev` and `dagster dev` serve every job
on Dagster's own temporary instance; with DATABASE_URL set, `dg launch` runs a job. The
production instance configuration lives in deploy/dagster.yaml, so nothing in the root
asks for DAGSTER_POSTGRES_URL.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from jobs_pipeline.definitions import defs
from jobs_pipeline_tests.support.deadlines import deadline
from jobs_pipeline_tests.support.deployment import REPOSITORY
from jobs_pipeline_tests.support.processes import (
    cli_environment,
    descendants,
    free_port,
    kill_groups,
    process_groups,
    wait_for_url,
)

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
COMMAND_DEADLINE_S = 180
STARTUP_DEADLINE_S = 300
STOP_DEADLINE_S = deadline(60)

JOBS = sorted(job.name for job in defs.resolve_all_job_defs())
JOBS_QUERY = "{ repositoriesOrError { ... on RepositoryConnection { nodes { jobs { name } } } } }"


def in_the_root(tmp_path: Path, *argv: str, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        cwd=REPOSITORY,
        env=cli_environment(tmp_path / "state", **variables),
        capture_output=True,
        text=True,
        timeout=COMMAND_DEADLINE_S,
        check=False,
    )


@pytest.mark.parametrize(
    "argv", [("dagster", "definitions", "validate"), ("dg", "check", "defs")], ids=" ".join
)
def test_the_definitions_validate_in_the_root_with_nothing_set(tmp_path, argv):
    done = in_the_root(tmp_path, *argv)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_dg_list_defs_lists_every_job_in_the_root(tmp_path):
    done = in_the_root(tmp_path, "dg", "list", "defs", "--json")

    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert sorted(job["name"] for job in listed["jobs"]) == sorted(
        name for name in JOBS if not name.startswith("__")
    ), listed["jobs"]


def test_dg_launch_runs_a_job_in_the_root(tmp_path, app_db_url):
    done = in_the_root(
        tmp_path, "dg", "launch", "--job", "global_override_check", DATABASE_URL=app_db_url
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert '[global-override-check] Result: {"action": "none"' in done.stdout + done.stderr


@pytest.mark.parametrize("command", ["dg", "dagster"])
def test_dev_in_the_root_serves_every_job_with_nothing_set(tmp_path, command):
    port = free_port()
    log = tmp_path / f"{command}-dev.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(BIN / command), "dev", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPOSITORY,
            env=cli_environment(tmp_path / "state"),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_url(f"http://127.0.0.1:{port}/server_info", process, log, STARTUP_DEADLINE_S)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/graphql",
            data=json.dumps({"query": JOBS_QUERY}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            (repository,) = json.load(response)["data"]["repositoriesOrError"]["nodes"]
    finally:
        # What is left after a grace (a run worker, say) gets SIGKILL, as a service manager does.
        groups = {process.pid} | process_groups(descendants(process.pid))
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_DEADLINE_S)
        kill_groups(groups, signal.SIGKILL)
        process.wait()

    assert sorted(job["name"] for job in repository["jobs"]) == JOBS
    text = log.read_text(errors="replace")
    assert "DAGSTER_POSTGRES_URL" not in text, text[-3000:]
    if command == "dg":  # `dagster dev` itself says it is superseded by `dg dev`
        assert "Warning" not in text, text[-3000:]
