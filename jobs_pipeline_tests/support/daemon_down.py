"""The live daemon-down scenario, run beside the rest of the suite.

A real Prometheus loading the shipped rules scrapes `jobs-pipeline metrics` beside the
deployed topology; the daemon is killed; JobsPipelineDaemonDown must fire. The rule says
"a heartbeat older than 5 minutes", and the scenario waits those 5 minutes of real time:
nothing in it is shortened. So that they are not 5 idle minutes of the suite, the
scenario runs as a process of its own (`python -m jobs_pipeline_tests.support.daemon_down`, its
own PostgreSQL, its own folder), started as soon as pytest has collected its test, and
the test reads what it observed once it is done. Stopped early (SIGTERM, the session's
end), it stops everything it started first.

As a pytest plugin (conftest's `pytest_plugins`) this module starts the scenario, gives
its observations to the test (fixture `daemon_down`), and stops it before the session's
leftovers guard looks.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs_pipeline_tests.support.deadlines import deadline

LIVE_TEST = (
    "test_monitoring_from_outside.py::test_prometheus_fires_daemon_down_once_the_daemon_is_killed"
)
PROMETHEUS = Path("/usr/bin/prometheus")
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "jobs-pipeline.rules.yml"

# Deadlines for waiting, never assertions about speed.
SERVER_DEADLINE_S = 120
SCRAPED_DEADLINE_S = 120
# The rule fires once the last heartbeat is 5 minutes old; the daemon beats about every
# 30 s, and Prometheus scrapes and evaluates every few seconds.
DAEMON_DOWN_DEADLINE_S = 9 * 60
# The whole scenario: starting it all, the wait, stopping it all.
SCENARIO_DEADLINE_S = DAEMON_DOWN_DEADLINE_S + 4 * 60
STOP_DEADLINE_S = deadline(60)
# A scrape's timeout can be no longer than its interval: a scrape slowed past it by a busy
# machine would drop the series (and the alert with them) until the next one.
SCRAPE_INTERVAL = "5s"


# -- Prometheus, over its HTTP API -------------------------------------------------------------


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


@dataclass
class Prometheus:
    base: str

    def query(self, promql: str) -> list[dict[str, Any]]:
        answer = get_json(f"{self.base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def targets_up(self) -> bool:
        targets = get_json(f"{self.base}/api/v1/targets")["data"]["activeTargets"]
        return bool(targets) and all(target["health"] == "up" for target in targets)

    def rule(self, name: str) -> dict[str, Any]:
        groups = get_json(f"{self.base}/api/v1/rules")["data"]["groups"]
        (found,) = [r for g in groups for r in g["rules"] if r.get("name") == name]
        return found

    def alerts(self, name: str, state: str) -> list[dict[str, Any]]:
        alerts = get_json(f"{self.base}/api/v1/alerts")["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == name and a["state"] == state]


def epoch(rfc3339: str) -> float:
    """Prometheus' timestamps carry nanoseconds; Python reads microseconds."""
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", rfc3339).replace("Z", "+00:00")
    return datetime.fromisoformat(trimmed).timestamp()


def prometheus_config(metrics_port: int) -> dict[str, Any]:
    """Scrapes the metrics server every few seconds; evaluates the shipped rules file, as
    it is, every second.
    """
    return {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
            "evaluation_interval": "1s",
        },
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "jobs-pipeline",
                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
            }
        ],
    }


# -- the scenario, in a process of its own -----------------------------------------------------


def observe(folder: Path) -> dict[str, Any]:
    """Runs the scenario in `folder`; what it saw, for the test to judge."""
    from jobs_pipeline.storage.app_database_setup import create_app_schema
    from jobs_pipeline.storage.embedded import start_embedded_postgres
    from jobs_pipeline.storage.engine import create_app_engine
    from jobs_pipeline.storage.schema_migrations import upgrade
    from jobs_pipeline_tests.support.dev_server import stop_orphaned_postgres

    server = start_embedded_postgres(folder / "pg", cleanup_mode="stop")
    try:
        server.ensure_database("app")
        server.ensure_database("dagster")
        engine = create_app_engine(server.url("app"))
        create_app_schema(engine)
        engine.dispose()
        upgrade(server.url("app"))
        return observe_deployment(
            folder, server.url("app"), server.url("dagster", "postgresql+psycopg2")
        )
    finally:
        server.server.cleanup()
        stop_orphaned_postgres(server.pgdata)


def observe_deployment(folder: Path, app_url: str, dagster_url: str) -> dict[str, Any]:
    from jobs_pipeline_tests.support.deployed_runs import wait_for
    from jobs_pipeline_tests.support.deployment import running_deployment
    from jobs_pipeline_tests.support.processes import JOBS_PIPELINE, free_port, wait_for_url

    with running_deployment(folder / "deployment", app_url, dagster_url) as deployment:
        metrics_port, prometheus_port = free_port(), free_port()
        metrics = deployment.start(
            "metrics", [str(JOBS_PIPELINE), "metrics", "--port", str(metrics_port)]
        )
        wait_for_url(
            f"http://127.0.0.1:{metrics_port}/metrics",
            metrics.popen,
            metrics.log,
            SERVER_DEADLINE_S,
        )
        config = folder / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config(metrics_port)))
        argv = [
            str(PROMETHEUS),
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ]
        process = deployment.start("prometheus", argv, deployment.dagster_environment)
        prometheus = Prometheus(f"http://127.0.0.1:{prometheus_port}")
        wait_for_url(f"{prometheus.base}/-/ready", process.popen, process.log, SERVER_DEADLINE_S)

        wait_for(
            deployment, "Prometheus scraped the metrics", prometheus.targets_up, SCRAPED_DEADLINE_S
        )
        heartbeats = wait_for(
            deployment,
            "the daemon's heartbeats in Prometheus",
            lambda: prometheus.query("jobs_pipeline_daemon_heartbeat_age_seconds"),
            SCRAPED_DEADLINE_S,
        )
        seen = time.time()
        # The rule evaluated on what was scraped while the daemon ran.
        wait_for(
            deployment,
            "JobsPipelineDaemonDown evaluated",
            lambda: epoch(prometheus.rule("JobsPipelineDaemonDown")["lastEvaluation"]) > seen,
            SCRAPED_DEADLINE_S,
        )
        rule_before = prometheus.rule("JobsPipelineDaemonDown")
        firing_before = prometheus.alerts("JobsPipelineDaemonDown", "firing")

        deployment.kill("daemon")
        killed_at = time.time()
        # How old the oldest heartbeat was then, as Prometheus last scraped it (up to one
        # scrape stale): the rule fires once that age passes 5 minutes, not 5 minutes on.
        ages = prometheus.query("max(jobs_pipeline_daemon_heartbeat_age_seconds)")

        firing = wait_for(
            deployment,
            "JobsPipelineDaemonDown firing",
            lambda: prometheus.alerts("JobsPipelineDaemonDown", "firing"),
            DAEMON_DOWN_DEADLINE_S,
        )
        return {
            "heartbeats before": heartbeats,
            "rule before": {"health": rule_before["health"], "state": rule_before["state"]},
            "firing before": firing_before,
            "firing after": firing,
            "fired after seconds": time.time() - killed_at,
            "oldest heartbeat age at the kill": float(ages[0]["value"][1]) if ages else 0.0,
            "storage up": prometheus.query('jobs_pipeline_source_up{source="dagster_storage"}'),
        }


def stop_on_sigterm() -> None:
    """SIGTERM unwinds the scenario like an error: everything it started is stopped."""

    def unwind(_signum: int, _frame: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, unwind)


def main(result: Path, folder: Path) -> int:
    stop_on_sigterm()
    try:
        observed = observe(folder)
    except BaseException:  # the test shows what went wrong
        result.write_text(json.dumps({"error": traceback.format_exc()}))
        return 1
    result.write_text(json.dumps(observed))
    return 0


# -- as a pytest plugin ------------------------------------------------------------------------


@dataclass
class Scenario:
    """The scenario's process (None in a worker of a parallel run: its controller started
    it) and the folder it writes into.
    """

    process: subprocess.Popen[bytes] | None
    folder: Path

    @property
    def result(self) -> Path:
        return self.folder / "result.json"

    @property
    def log(self) -> Path:
        return self.folder / "scenario.log"

    def started(self) -> float:
        """When it started (seconds since the epoch), written by whoever started it."""
        return float((self.folder / "started").read_text())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def wait(self) -> bool:
        """Waits for its result until the scenario's deadline; whether it came."""
        give_up = self.started() + SCENARIO_DEADLINE_S
        while time.time() < give_up:
            if self.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=1)
                if self.process.poll() is not None:
                    return self.result.exists()
            elif self.result.exists():
                return True
            else:
                time.sleep(1)
        return self.result.exists()


SCENARIO = pytest.StashKey[Scenario]()
FOLDER_KEY = "jobs_pipeline_daemon_down_folder"


def start_scenario(config: pytest.Config, folder: Path | None = None) -> Scenario:
    folder = folder or Path(tempfile.mkdtemp(prefix="jp-daemon-down-"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "started").write_text(str(time.time()))
    with (folder / "scenario.log").open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jobs_pipeline_tests.support.daemon_down",
                str(folder / "result.json"),
                str(folder),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[2],
        )
    scenario = Scenario(process, folder)
    config.stash[SCENARIO] = scenario
    return scenario


def in_worker(config: pytest.Config) -> bool:
    return getattr(config, "workerinput", None) is not None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Starts the scenario as soon as its test is known to run, so its wait overlaps the
    tests before it. In a parallel run the controller starts it (below), once.
    """
    if session.config.option.collectonly or in_worker(session.config):
        return
    if any(item.nodeid.endswith(LIVE_TEST) for item in session.items):
        start_scenario(session.config)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, in the controller: every worker learns the one scenario's folder."""
    config = node.config
    if FOLDER_KEY not in config.stash.get(FOLDERS, {}):
        config.stash[FOLDERS] = {FOLDER_KEY: tempfile.mkdtemp(prefix="jp-daemon-down-")}
    node.workerinput[FOLDER_KEY] = config.stash[FOLDERS][FOLDER_KEY]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """pytest-xdist, in the controller: the first worker to collect the test has it started."""
    config = node.config
    if SCENARIO not in config.stash and any(nodeid.endswith(LIVE_TEST) for nodeid in ids):
        start_scenario(config, Path(config.stash[FOLDERS][FOLDER_KEY]))


FOLDERS = pytest.StashKey[dict[str, str]]()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Before the leftovers guard: a scenario still going (its test never ran) is stopped."""
    scenario = session.config.stash.get(SCENARIO, None)
    if scenario is not None:
        scenario.stop()


@pytest.fixture
def daemon_down(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """What the scenario observed, once it is done (started here if collection did not)."""
    config = request.config
    scenario = config.stash.get(SCENARIO, None)
    if scenario is None and in_worker(config):
        scenario = Scenario(None, Path(config.workerinput[FOLDER_KEY]))  # type: ignore[attr-defined]
    if scenario is None:
        scenario = start_scenario(config)
    if not scenario.wait():
        scenario.stop()
        pytest.fail(f"the daemon-down scenario wrote no result in time:\n{tail(scenario.log)}")
    observed = json.loads(scenario.result.read_text())
    if "error" in observed:
        observed["error"] += f"\n--- the scenario's log ---\n{tail(scenario.log)}"
    yield observed
    shutil.rmtree(scenario.folder, ignore_errors=True)


def tail(log: Path, lines: int = 80) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
