"""`jobs-pipeline setup --runs-in`: the dagster.yaml it writes for each place runs execute
is the project's with only the run launcher changed, and Dagster builds that launcher
from it (the settings the launcher reads from the environment set as an operator sets them).
"""

import re
from typing import Any

import pytest
import yaml

from jobs_pipeline.deployment.run_launchers import RUNS_IN, instance_config_text
from jobs_pipeline.runs.containers import RUN_SETTINGS, ContainerRunLauncher
from jobs_pipeline.runs.fleet import FleetRunLauncher
from jobs_pipeline.runs.workers import WorkerCheckingRunLauncher
from jobs_pipeline_tests.support.deployment import REPOSITORY
from jobs_pipeline_tests.support.running import temporary_instance

LAUNCHERS = {
    "code-server": WorkerCheckingRunLauncher,
    "containers": ContainerRunLauncher,
    "fleet": FleetRunLauncher,
}
ENVIRONMENT = {
    "JOBS_PIPELINE_IMAGE": "jobs-pipeline:test",
    "JOBS_PIPELINE_RUN_NETWORK": "host",
    "CELERY_BROKER_URL": "redis://127.0.0.1:1/0",
}


def instance_config(runs_in: str) -> dict[str, Any]:
    return yaml.safe_load(instance_config_text(runs_in))


# How definitions.py reads a setting: `EnvVar("X")`, `optional_env("X")`, `environ.get("X")`.
SETTING_READ = r'(?:EnvVar(?:\.int)?|optional_env|env_flag|environ\.get)\(\s*"([A-Z_]+)"'


def launcher_override(runs_in: str) -> dict[str, Any]:
    return {"run_launcher": instance_config(runs_in)["run_launcher"]}


@pytest.mark.parametrize("runs_in", RUNS_IN)
def test_only_the_run_launcher_differs_from_the_projects_dagster_yaml(runs_in):
    shipped = instance_config("code-server")
    written = instance_config(runs_in)

    assert {key: value for key, value in written.items() if key != "run_launcher"} == {
        key: value for key, value in shipped.items() if key != "run_launcher"
    }
    assert instance_config_text(runs_in).count("run_launcher:") == 1


@pytest.mark.parametrize("runs_in", RUNS_IN)
def test_dagster_builds_the_launcher_from_the_file(runs_in, monkeypatch):
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)

    with temporary_instance(
        overrides={"run_launcher": instance_config(runs_in)["run_launcher"]}
    ) as instance:
        launcher = instance.run_launcher

    assert type(launcher) is LAUNCHERS[runs_in]
    assert launcher.supports_check_run_worker_health


def test_a_container_is_given_every_setting_its_run_reads(monkeypatch):
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db/app")
    monkeypatch.delenv("SMTP_HOST", raising=False)

    with temporary_instance(
        overrides={"run_launcher": instance_config("containers")["run_launcher"]}
    ) as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher, ContainerRunLauncher)
        assert "DATABASE_URL" in launcher.env_vars
        assert "SMTP_HOST" not in launcher.env_vars  # unset: not passed as an empty value


def test_every_setting_the_code_reads_is_given_to_a_runs_container():
    source = (REPOSITORY / "jobs_pipeline" / "definitions.py").read_text()
    read = set(
        re.findall(
            r'(?:EnvVar(?:\.int)?|optional_env|env_flag|environ\.get)\(\s*"([A-Z_]+)"', source
        )
    )

    assert "DATABASE_URL" in read  # the pattern finds what it looks for
    assert read <= set(RUN_SETTINGS), read - set(RUN_SETTINGS)


def test_an_unknown_place_is_refused():
    with pytest.raises(ValueError, match="not one of code-server, containers, fleet"):
        instance_config_text("kubernetes")
