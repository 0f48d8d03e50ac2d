"""The inventory operators rely on, pinned: jobs, schedules, crons, zones, priorities."""

import datetime as dt
import os
import shutil
import subprocess
import sys

import dagster as dg
import pytest
import yaml
from sqlalchemy import inspect

from jobs_pipeline.definitions import defs
from jobs_pipeline.job_parts.scheduling import is_maintenance_job, priority_of
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.storage.app_tables import app_metadata
from jobs_pipeline.storage.embedded import INSTANCE_CONFIG
from jobs_pipeline.tags import TOOL_TAG
from jobs_pipeline_tests.support.running import job_result

# The jobs as the README's table gives them: Dagster job, schedule (UTC), priority.
SCHEDULES = [s for s in defs.schedules or [] if isinstance(s, dg.ScheduleDefinition)]

INVENTORY = {
    "tier_expiration": ("15 0 * * *", "high"),
    "global_override_check": ("0 * * * *", "medium"),
    "promo_cleanup": ("0 2 * * 0", "low"),
    "discipline_stats_rollup": ("0 1 * * *", "medium"),
    "trial_reminder": ("0 9 * * *", "low"),
    "email_delivery": ("*/5 * * * *", "low"),
    "history_retention": ("30 3 * * *", "low"),
}
# Operators' tools (not run by name with the jobs above) that have a schedule of their own.
TOOL_SCHEDULES = {"tonight_forecast": "0 22 * * *"}


def test_every_job_resolves_and_matches_the_interface():
    jobs = {job.name: job for job in defs.resolve_all_job_defs() if is_maintenance_job(job)}
    assert set(jobs) == set(INVENTORY)
    tools = {job.name for job in defs.resolve_all_job_defs() if job.tags.get(TOOL_TAG) == "true"}
    assert tools == {"undo_run", *TOOL_SCHEDULES}
    for name, (_cron, priority) in INVENTORY.items():
        assert priority_of(jobs[name].tags) == priority
        assert jobs[name].tags["job_lock"] == name
        assert jobs[name].description


def test_priorities_launch_high_before_medium_before_low():
    value = {name: int(defs.resolve_job_def(name).tags["dagster/priority"]) for name in INVENTORY}
    assert value["tier_expiration"] > value["global_override_check"] > value["promo_cleanup"]


def test_schedules_are_utc_running_and_target_their_job():
    schedules = {s.job_name: s for s in SCHEDULES}
    assert set(schedules) == set(INVENTORY) | set(TOOL_SCHEDULES)
    assert len(SCHEDULES) == len(list(defs.schedules or []))
    crons = {name: cron for name, (cron, _priority) in INVENTORY.items()} | TOOL_SCHEDULES
    for job_name, cron in crons.items():
        schedule = schedules[job_name]
        assert schedule.name == f"{job_name}_schedule"
        assert schedule.cron_schedule == cron
        assert schedule.execution_timezone == "UTC"
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


@pytest.mark.parametrize("job_name", sorted([*INVENTORY, *TOOL_SCHEDULES]))
def test_a_schedule_tick_requests_a_run_of_its_job(job_name, instance):
    schedule = next(s for s in SCHEDULES if s.job_name == job_name)
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=dt.datetime(2026, 11, 29, 2, 0, tzinfo=dt.UTC)
    )
    data = schedule.evaluate_tick(context)
    assert data.run_requests is not None
    (request,) = data.run_requests
    assert request.job_name in (None, job_name)


@pytest.mark.processes
def test_loading_the_definitions_needs_no_database():
    """No side effects at import: loading `defs` with no DATABASE_URL must work."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    code = "from jobs_pipeline.definitions import defs; print(len(defs.resolve_all_job_defs()))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert int(out.stdout.strip()) >= len(INVENTORY)


def test_a_run_without_database_url_fails_clearly(instance, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    job = defs.resolve_job_def("global_override_check")
    with pytest.raises(dg.DagsterInvalidConfigError, match='variable "DATABASE_URL"'):
        job.execute_in_process(instance=instance)


def test_the_declared_tables_match_the_contract_schema(engine):
    inspector = inspect(engine)
    for table in app_metadata.sorted_tables:
        columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert set(columns) == {c.name for c in table.columns}, table.name
        for column in table.columns:
            reflected = columns[column.name]
            assert reflected["nullable"] == column.nullable, f"{table.name}.{column.name}"
            assert (reflected["default"] is not None) == (column.server_default is not None), (
                f"{table.name}.{column.name}"
            )
            assert reflected["type"]._type_affinity == column.type._type_affinity, (
                f"{table.name}.{column.name}"
            )
        primary_key = inspector.get_pk_constraint(table.name)["constrained_columns"]
        assert primary_key == [c.name for c in table.primary_key.columns]


def test_dagster_yaml_keeps_history_in_postgres_with_one_run_per_job(
    tmp_path, postgres, project_root, app_db_url, monkeypatch
):
    config = yaml.safe_load(INSTANCE_CONFIG.read_text())
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_POSTGRES_URL"}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    (limit,) = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert limit == {"key": "job_lock", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}

    postgres.ensure_database("dagster_storage_test")
    monkeypatch.setenv(
        "DAGSTER_POSTGRES_URL", postgres.url("dagster_storage_test", "postgresql+psycopg2")
    )
    shutil.copyfile(INSTANCE_CONFIG, tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        job = defs.resolve_job_def("global_override_check")
        execution = job.execute_in_process(
            instance=instance, resources={"db": AppDatabase(url=app_db_url)}
        )
        assert job_result(execution) == {"action": "none"}
    # A new instance on the same storage (a restarted webserver) still has the run.
    with dg.DagsterInstance.from_config(str(tmp_path)) as reopened:
        run = reopened.get_run_by_id(execution.run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["job_lock"] == "global_override_check"
