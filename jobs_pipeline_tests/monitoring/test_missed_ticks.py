"""Missed ticks: a scheduler that was down over several scheduled times runs each job
once, for the latest missed tick, not once per missed tick.

Driven the way Dagster's own scheduler tests drive it: the daemon's scheduler
iteration (`launch_scheduled_runs`) at chosen, frozen times, against an instance
configured from the repo's dagster.yaml (PostgreSQL storage) and the workspace
the daemon loads (workspace.yaml, in a code server of its own). Runs are only
queued: no daemon takes them off the queue here.
"""

import datetime as dt
import itertools
import logging
from collections import defaultdict
from pathlib import Path

import dagster as dg
import pytest
import yaml

# Private on purpose: Dagster has no public API to run its scheduler at a chosen time.
# These are what Dagster's own scheduler tests use (as of 1.13.27).
from dagster._core.scheduler.scheduler import DagsterDaemonScheduler
from dagster._core.storage.tags import SCHEDULED_EXECUTION_TIME_TAG
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster._scheduler.scheduler import launch_scheduled_runs
from dagster._utils.error import SerializableErrorInfo

from jobs_pipeline.storage.embedded import INSTANCE_CONFIG

UTC = dt.UTC
logger = logging.getLogger(__name__)
_database_numbers = itertools.count()

# The schedules are turned on (the daemon's first iteration) on Monday 2026-03-09 23:57.
TURNED_ON = dt.datetime(2026, 3, 9, 23, 57, tzinfo=UTC)
# The daemon's next iteration: global_override_check (hourly) is due for 00:00,
# tier_expiration (daily 00:15) for 00:15, email_delivery (every 5 minutes) for the
# latest of 00:00..00:15.
FIRST_TICKS = dt.datetime(2026, 3, 10, 0, 18, tzinfo=UTC)
FIRST_SCHEDULED = {
    "global_override_check": "2026-03-10T00:00:00+00:00",
    "tier_expiration": "2026-03-10T00:15:00+00:00",
    "email_delivery": "2026-03-10T00:15:00+00:00",
}
# Then the daemon is down until Sunday 2026-03-15 02:28. Missed: (ticks, the latest).
BACK_UP = dt.datetime(2026, 3, 15, 2, 28, tzinfo=UTC)
MISSED = {
    "global_override_check": (122, "2026-03-15T02:00:00+00:00"),
    "tier_expiration": (5, "2026-03-15T00:15:00+00:00"),
    "discipline_stats_rollup": (6, "2026-03-15T01:00:00+00:00"),
    "promo_cleanup": (1, "2026-03-15T02:00:00+00:00"),
    "trial_reminder": (5, "2026-03-14T09:00:00+00:00"),
    "email_delivery": (1466, "2026-03-15T02:25:00+00:00"),
    "history_retention": (5, "2026-03-14T03:30:00+00:00"),
    "tonight_forecast": (5, "2026-03-14T22:00:00+00:00"),
}


@pytest.fixture
def dagster_home(tmp_path, postgres, app_db_url, monkeypatch) -> Path:
    """A DAGSTER_HOME-like folder for an instance on a fresh PostgreSQL database."""
    database = f"dagster_missed_ticks_{next(_database_numbers)}"
    postgres.ensure_database(database)
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", postgres.url(database, "postgresql+psycopg2"))
    # Creating a run resolves the `db` resource's EnvVar in the code server; nothing connects.
    monkeypatch.setenv("DATABASE_URL", app_db_url)
    home = tmp_path / "dagster_home"
    home.mkdir()
    return home


@pytest.fixture
def workspace(project_root) -> WorkspaceFileTarget:
    return WorkspaceFileTarget(paths=[str(project_root / "workspace.yaml")])


def scheduler_iteration(context: WorkspaceProcessContext, at: dt.datetime) -> None:
    """One iteration of the scheduler daemon at `at`, with the instance's own settings."""
    scheduler = context.instance.scheduler
    assert isinstance(scheduler, DagsterDaemonScheduler)
    with freeze_time(at):
        results = list(
            launch_scheduled_runs(
                context, logger, at, {}, max_catchup_runs=scheduler.max_catchup_runs
            )
        )
    errors = [result for result in results if isinstance(result, SerializableErrorInfo)]
    assert errors == []


def scheduled_times(instance: dg.DagsterInstance) -> dict[str, list[str]]:
    """Each job's runs, as the scheduled time their tick was for, oldest first."""
    times = defaultdict(list)
    for run in instance.get_runs():
        assert run.status == dg.DagsterRunStatus.QUEUED
        times[run.job_name].append(run.tags[SCHEDULED_EXECUTION_TIME_TAG])
    return {job: sorted(values) for job, values in times.items()}


def instance_config(project_root: Path, scheduler: str) -> str:
    """The repo's dagster.yaml, or the same without its scheduler block (Dagster's default)."""
    text = INSTANCE_CONFIG.read_text()
    if scheduler == "repo":
        return text
    config = yaml.safe_load(text)
    del config["scheduler"]
    return yaml.safe_dump(config)


def test_the_repo_dagster_yaml_limits_catch_up_to_one_run(project_root):
    config = yaml.safe_load(INSTANCE_CONFIG.read_text())
    assert config["scheduler"] == {
        "module": "dagster._core.scheduler",
        "class": "DagsterDaemonScheduler",
        "config": {"max_catchup_runs": 1},
    }


# Dagster's default scheduler (max_catchup_runs 5) gives the same single run: in 1.13
# a schedule defined in code has no partition set in its snapshot, and for those the
# scheduler launches only the latest missed tick, whatever max_catchup_runs says.
@pytest.mark.parametrize(("scheduler", "max_catchup_runs"), [("repo", 1), ("dagster_default", 5)])
def test_after_an_outage_each_schedule_runs_once_for_its_latest_missed_tick(
    scheduler, max_catchup_runs, dagster_home, project_root, workspace, caplog
):
    (dagster_home / "dagster.yaml").write_text(instance_config(project_root, scheduler))
    with (
        dg.DagsterInstance.from_config(str(dagster_home)) as instance,
        create_test_daemon_workspace_context(workspace, instance) as context,
    ):
        assert isinstance(instance.scheduler, DagsterDaemonScheduler)
        assert instance.scheduler.max_catchup_runs == max_catchup_runs

        scheduler_iteration(context, TURNED_ON)
        assert instance.get_runs() == []

        scheduler_iteration(context, FIRST_TICKS)
        assert scheduled_times(instance) == {job: [at] for job, at in FIRST_SCHEDULED.items()}

        # Down from 00:20 on the 10th to 02:30 on the 15th: one new run per job.
        caplog.clear()
        scheduler_iteration(context, BACK_UP)
        # What Dagster says when it drops the older missed ticks of a schedule.
        not_catching_up = {
            record.getMessage().split()[0]
            for record in caplog.records
            if record.getMessage().endswith("has no partition set, so not trying to catch up")
        }
        assert not_catching_up == {f"{job}_schedule" for job, (n, _) in MISSED.items() if n > 1}
        expected = {
            job: [*([FIRST_SCHEDULED[job]] if job in FIRST_SCHEDULED else []), latest]
            for job, (_, latest) in MISSED.items()
        }
        assert scheduled_times(instance) == expected

        # The next iteration finds nothing left to catch up.
        scheduler_iteration(context, BACK_UP + dt.timedelta(minutes=1))
        assert scheduled_times(instance) == expected
