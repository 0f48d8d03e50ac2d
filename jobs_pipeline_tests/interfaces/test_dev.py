"""`jobs-pipeline dev`, the README's first command: run for real, driven over HTTP."""

from pathlib import Path

import pytest
from dagster_graphql import DagsterGraphQLClient

from jobs_pipeline_tests.support.dev_server import (
    connect,
    graphql,
    left_running,
    running_dev,
    short_state_dir,
    stop,
    wait_for_run,
)
from jobs_pipeline_tests.support.processes import answers_200, cli_environment, run_cli, tail

pytestmark = pytest.mark.slow

SCHEDULES = {
    "tier_expiration": "15 0 * * *",
    "global_override_check": "0 * * * *",
    "promo_cleanup": "0 2 * * 0",
    "discipline_stats_rollup": "0 1 * * *",
    "trial_reminder": "0 9 * * *",
    "email_delivery": "*/5 * * * *",
}
SENSORS = {
    "run_failure_alert_sensor",
    "alert_redelivery_sensor",
    "long_running_run_sensor",
    "failure_rate_sensor",
    "user_discipline_stats_freshness_sensor",
    "waiting_run_sensor",
    "heartbeat_sensor",
}

CLI_RUNS = """
{ runsOrError(filter: {pipelineName: "global_override_check"}) {
    ... on Runs { results { runId tags { key value } } }
} }
"""

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

        # dev says how to reach its embedded database, without a password.
        said = dev.log.read_text()
        assert "app database postgresql://postgres@/app?host=" in said, tail(dev.log)
        assert f"psql 'postgresql://postgres@/app?host={pgdata}'" in said, tail(dev.log)

        # With DAGSTER_HOME unset, the CLI finds dev's instance: its run goes through dev's
        # queue, shows in dev's UI, and `list` shows it.
        cli_env = cli_environment(state)
        ran = run_cli("run", "global-override-check", "--dry-run", env=cli_env, cwd=state.parent)
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert "queued on the instance in" in ran.stderr, ran.stderr[-3000:]
        cli_run_id = ran.stderr.split("Run ", 1)[1].split()[0]
        assert client.get_run_status(cli_run_id).value == "SUCCESS"
        # Its link names dev's own port (a free one here, never the default 3000).
        assert f"(http://127.0.0.1:{dev.port}/runs/{cli_run_id})" in ran.stderr, ran.stderr
        ui_runs = graphql(dev, CLI_RUNS)["runsOrError"]["results"]
        (shown,) = [run for run in ui_runs if run["runId"] == cli_run_id]
        tags = {tag["key"]: tag["value"] for tag in shown["tags"]}
        assert tags["jobs_pipeline/dry_run"] == "true"
        assert tags["jobs_pipeline/triggered_by"].startswith("cli:")
        listed = run_cli("list", env=cli_env, cwd=state.parent)
        assert listed.returncode == 0, listed.stderr[-3000:]
        (override_row,) = [
            line for line in listed.stdout.splitlines() if line.startswith("global-override-check")
        ]
        assert cli_run_id[:8] in override_row, listed.stdout

        below = stop(dev)

        # Dagster says nothing is amiss: no superseded command, no ignored dagster.yaml.
        output = dev.log.read_text(errors="replace")
        assert "Warning" not in output and "will not be used" not in output, output[-3000:]
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


def test_dev_runs_from_a_deep_checkout(tmp_path_factory):
    """The state folder of a checkout 150 characters deep: too long a path for the embedded
    server's unix socket (107 bytes), which then lives in a short runtime folder instead.
    """
    base = tmp_path_factory.mktemp("deep")
    checkout = base / "/".join(["a-checkout-folder-deep-down"] * 6)
    checkout = Path(str(checkout)[:150].rstrip("/"))
    assert len(str(checkout)) >= 140
    checkout.mkdir(parents=True)
    state = checkout / ".jobs-pipeline"
    assert len(str(state / "pgdata" / ".s.PGSQL.5432")) > 107

    with running_dev(state) as dev:
        client = DagsterGraphQLClient("127.0.0.1", port_number=dev.port)
        run_id = client.submit_job_execution("global_override_check")
        assert wait_for_run(client, run_id, dev) == "SUCCESS", tail(dev.log)
        assert "Traceback" not in dev.log.read_text()
        stop(dev)


def test_a_state_folder_that_cannot_be_made_is_one_clear_line(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")

    ran = run_cli("run", "global-override-check", env=cli_environment(blocked / "s"), cwd=tmp_path)

    assert ran.returncode == 1
    (line,) = ran.stderr.strip().splitlines()
    assert line.startswith(f"jobs-pipeline: the embedded PostgreSQL in {blocked}/s/pgdata did not")
    assert "Set JOBS_PIPELINE_STATE_DIR to another folder" in line
