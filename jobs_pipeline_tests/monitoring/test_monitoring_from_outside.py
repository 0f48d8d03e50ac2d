"""Watched from outside: the Prometheus metrics, the shipped alerting rules, a real Prometheus.

- The rules as shipped in deploy/prometheus: `promtool check rules`, `promtool test rules`
  (each rule firing and not), `promtool check config` on the example configuration.
- The metrics of a real instance (PostgreSQL storage) after real runs on a real app
  database: a tier-expiration that downgraded 3 users, one the guard refused, a dry run,
  an abnormal forecast, a run left queued, a pool slot held by an ended run, due emails.
  The scrape passes `promtool check metrics`, and each value is what the runs did; with
  the app database gone, its metrics are left out and the rest still served.
- The same metrics from `jobs-pipeline metrics` and the admin API's `/metrics`, over HTTP,
  without a token; SIGTERM stops the metrics server, exit status 0.
- Live: the deployed topology, the metrics server beside it and a real Prometheus loading
  the shipped rules; the daemon killed, JobsPipelineDaemonDown fires (after its 5 minutes,
  waited beside the rest of the suite: `jobs_pipeline_tests/support/daemon_down.py`).
"""

import math
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from sqlalchemy import Engine, func, select, update

from jobs_pipeline.definitions import defs
from jobs_pipeline.deployment.metrics import metrics_registry
from jobs_pipeline.interfaces.launching.execution import RunQueue
from jobs_pipeline.interfaces.launching.instance import prepare_pools
from jobs_pipeline.interfaces.launching.plans import plan_launch
from jobs_pipeline.jobs.promo_cleanup import promo_cleanup_job
from jobs_pipeline.jobs.tier_expiration import OP_NAME as DOWNGRADE_STEP
from jobs_pipeline.jobs.tier_expiration import tier_expiration_job
from jobs_pipeline.operator_tools.forecast import tonight_forecast_job
from jobs_pipeline.resources.alerting import AlertChannels
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.resources.mail import Mailer
from jobs_pipeline.storage.embedded import INSTANCE_CONFIG
from jobs_pipeline.storage.engine import create_app_engine
from jobs_pipeline.storage.project_tables import email_outbox
from jobs_pipeline.tags import GUARD_REFUSED_TAG
from jobs_pipeline_tests.support.app_data import add_expired_user, add_user, db_now, set_override
from jobs_pipeline_tests.support.deadlines import deadline
from jobs_pipeline_tests.support.deployment import REPOSITORY, Deployment
from jobs_pipeline_tests.support.postgres import TEMPLATE, admin_connection
from jobs_pipeline_tests.support.processes import (
    JOBS_PIPELINE,
    cli_environment,
    free_port,
    wait_for_url,
)
from jobs_pipeline_tests.support.running import failure_message, job_result, run_job

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

RULES = REPOSITORY / "deploy" / "prometheus" / "jobs-pipeline.rules.yml"
RULE_TESTS = REPOSITORY / "deploy" / "prometheus" / "jobs-pipeline.rules.test.yml"
EXAMPLE_CONFIG = REPOSITORY / "deploy" / "prometheus" / "prometheus.yml"
PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")

# Deadlines for waiting, never assertions about speed.
SERVER_DEADLINE_S = 120
STOP_DEADLINE_S = deadline(20)
SCRAPED_DEADLINE_S = 120
# The rule fires once the last heartbeat is 5 minutes old; the daemon beats about every
# 30 s, and Prometheus scrapes and evaluates every few seconds.
DAEMON_DOWN_DEADLINE_S = 9 * 60

# A scrape's timeout can be no longer than its interval: a scrape slowed past it by a busy
# machine would drop the series (and the alert with them) until the next one.
SCRAPE_INTERVAL = "5s"

DOWNGRADED = 3
WRITES_USERS = "writes_users"


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(PROMTOOL), *args], input=stdin, capture_output=True, timeout=120, check=False
    )


# -- the rules as shipped -------------------------------------------------------------------


def test_the_shipped_rules_load_and_their_unit_tests_pass():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert b"SUCCESS: 7 rules found" in checked.stdout
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = promtool("check", "config", str(EXAMPLE_CONFIG))
    assert config.returncode == 0, config.stdout + config.stderr


def test_each_rule_is_unit_tested_firing_and_not():
    rules = yaml.safe_load(RULES.read_text())
    (group,) = rules["groups"]
    assert group["name"] == "jobs-pipeline"
    names = {rule["alert"] for rule in group["rules"]}
    for rule in group["rules"]:
        assert set(rule["labels"]) == {"severity"}, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
    cases = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    assert {c["alertname"] for c in cases if c["exp_alerts"]} == names
    assert {c["alertname"] for c in cases if not c["exp_alerts"]} == names


# -- a real instance after real runs ---------------------------------------------------------


@dataclass
class Observed:
    """An instance and an app database after the runs the metrics are checked against."""

    instance: dg.DagsterInstance
    engine: Engine
    app_url: str
    home: Path
    dagster_url: str
    succeeded: str  # the tier-expiration run that downgraded DOWNGRADED users
    refused: str  # the one its guard stopped
    queued: str  # a promo-cleanup run left in the queue (no daemon serves the instance)

    def scrape(self, engine: Engine | None = None) -> str:
        registry = metrics_registry(self.instance, engine or self.engine, defs)
        return generate_latest(registry).decode()

    def record(self, run_id: str) -> dg.RunRecord:
        (record,) = self.instance.get_run_records(dg.RunsFilter(run_ids=[run_id]))
        return record


def fresh_database(postgres, prefix: str, template: str | None = None) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
    with admin_connection(postgres) as connection:
        connection.execute(statement)
    return name


def drop_database(postgres, name: str) -> None:
    with admin_connection(postgres) as connection:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        connection.execute(drop.format(sql.Identifier(name)))


def downgrade_three(engine: Engine, db: AppDatabase, instance: dg.DagsterInstance) -> str:
    now = db_now(engine)
    with engine.begin() as connection:
        for _ in range(DOWNGRADED):
            add_expired_user(connection, now)
        for _ in range(20):
            add_user(connection, tier="pro", tier_source="purchase", tier_expires_at=None)
    execution = run_job(tier_expiration_job, db, instance)
    assert execution.success, failure_message(execution)
    assert job_result(execution)["processed"] == DOWNGRADED
    return execution.run_id


def refused_by_the_guard(engine: Engine, db: AppDatabase, instance: dg.DagsterInstance) -> str:
    now = db_now(engine)
    with engine.begin() as connection:
        for _ in range(30):
            add_expired_user(connection, now)
    execution = run_job(tier_expiration_job, db, instance, max_downgrades=25)
    assert not execution.success
    assert failure_message(execution).startswith("Refusing to downgrade paying users")
    return execution.run_id


def abnormal_forecast(engine: Engine, db: AppDatabase, instance: dg.DagsterInstance) -> None:
    """An override global-override-check cannot read: its forecast is abnormal (alerted to
    the log only: no channel is configured).
    """
    with engine.begin() as connection:
        set_override(connection, {"tier": "gold", "expires_at": "2020-01-01T00:00:00Z"})
    channels = AlertChannels(mailer=Mailer())
    execution = tonight_forecast_job.execute_in_process(
        resources={"db": db, "alerts": channels}, instance=instance
    )
    assert job_result(execution)["abnormal"] == ["global_override_check"]


def queue_a_run(instance: dg.DagsterInstance) -> str:
    with RunQueue(instance) as queue:
        return queue.submit(
            promo_cleanup_job.name, plan_launch(promo_cleanup_job), triggered_by="test"
        )


def outbox_as_the_app_left_it(engine: Engine) -> None:
    """Of the three tier-expired emails queued: one due for two hours, one failed."""
    with engine.begin() as connection:
        first, second, _third = connection.execute(
            select(email_outbox.c.id).order_by(email_outbox.c.id)
        ).scalars()
        connection.execute(
            update(email_outbox)
            .where(email_outbox.c.id == first)
            .values(next_attempt_at=func.now() - timedelta(hours=2))
        )
        connection.execute(
            update(email_outbox).where(email_outbox.c.id == second).values(status="failed")
        )


@pytest.fixture(scope="module")
def observed(postgres, tmp_path_factory) -> Iterator[Observed]:
    app_name = fresh_database(postgres, "metrics_app", TEMPLATE)
    dagster_name = fresh_database(postgres, "metrics_dagster")
    app_url = postgres.url(app_name)
    dagster_url = postgres.url(dagster_name, "postgresql+psycopg2")
    home = tmp_path_factory.mktemp("metrics") / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCE_CONFIG, home / "dagster.yaml")
    engine = create_app_engine(app_url)
    db = AppDatabase(url=app_url, retry_delay_seconds=0.1, max_retries=1)
    try:
        with pytest.MonkeyPatch.context() as environment:
            environment.setenv("DAGSTER_POSTGRES_URL", dagster_url)
            environment.setenv("DATABASE_URL", app_url)  # the queued run's resource reads it
            with dg.DagsterInstance.from_config(str(home)) as instance:
                prepare_pools(instance)
                succeeded = downgrade_three(engine, db, instance)
                refused = refused_by_the_guard(engine, db, instance)
                assert run_job(tier_expiration_job, db, instance, dry_run=True).success
                abnormal_forecast(engine, db, instance)
                queued = queue_a_run(instance)
                # What a worker killed mid-step leaves: its run ended, its slot still held.
                storage = instance.event_log_storage
                claim = storage.claim_concurrency_slot(WRITES_USERS, refused, DOWNGRADE_STEP)
                assert claim.is_claimed
                outbox_as_the_app_left_it(engine)
                yield Observed(
                    instance, engine, app_url, home, dagster_url, succeeded, refused, queued
                )
                storage.free_concurrency_slots_for_run(refused)
    finally:
        engine.dispose()
        drop_database(postgres, app_name)
        drop_database(postgres, dagster_name)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    key = (f"jobs_pipeline_{name}", frozenset(labels.items()))
    assert key in found, f"no {key}; the {name} samples: {named(found, name)}"
    return found[key]


def named(found: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in found.items() if n == f"jobs_pipeline_{name}"}


def test_a_scrape_passes_promtool_check_metrics(observed):
    checked = promtool("check", "metrics", stdin=observed.scrape().encode())
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, b"", b"")


def test_the_refused_run_carries_the_guard_tag(observed):
    assert observed.record(observed.refused).dagster_run.tags[GUARD_REFUSED_TAG] == "true"
    assert GUARD_REFUSED_TAG not in observed.record(observed.succeeded).dagster_run.tags


def test_the_jobs_metrics_say_what_the_runs_did(observed):
    found = samples(observed.scrape())

    assert value(found, "source_up", source="dagster_storage") == 1
    assert value(found, "source_up", source="app_database") == 1
    tier = "tier_expiration"
    items = named(found, "job_last_success_items")
    assert {dict(labels)["item"]: v for labels, v in items.items()} == {
        "users_downgraded": DOWNGRADED,
        "users_failed": 0,
        "users_skipped": 0,
    }
    success, refused = observed.record(observed.succeeded), observed.record(observed.refused)
    assert value(found, "job_last_success_timestamp_seconds", job_name=tier) == success.end_time
    # The refused run is the last real one: the dry run after it does not count.
    statuses = {dict(k)["status"]: v for k, v in named(found, "job_last_run_status").items()}
    assert statuses["FAILURE"] == 1 and sum(statuses.values()) == 1
    assert refused.end_time is not None and refused.start_time is not None
    duration = refused.end_time - refused.start_time
    assert value(found, "job_last_run_duration_seconds", job_name=tier) == duration
    # Daily: a day, plus half of one (over the 15-minute floor).
    assert value(found, "job_success_overdue_after_seconds", job_name=tier) == 36 * 3600
    assert value(found, "guard_refusals_total", job_name=tier) == 1
    assert value(found, "guard_refusals_total", job_name="promo_cleanup") == 0
    # Finished in 24 hours: the success, the refusal and the dry run; one failed.
    assert value(found, "job_failure_ratio", job_name=tier) == pytest.approx(1 / 3)
    assert value(found, "forecast_abnormal_total", job_name="global_override_check") == 1
    assert value(found, "forecast_abnormal_total", job_name=tier) == 0
    assert value(found, "forecast_latest_abnormal", job_name="global_override_check") == 1
    assert value(found, "forecast_latest_abnormal", job_name=tier) == 0


def test_the_queue_pool_and_daemon_metrics_say_what_the_instance_holds(observed):
    before = time.time()
    found = samples(observed.scrape())
    after = time.time()

    created = observed.record(observed.queued).create_timestamp.timestamp()
    queued = {dict(k)["job_name"]: v for k, v in named(found, "runs_queued").items()}
    assert queued == {job: 0 for job in queued} | {"promo_cleanup": 1}
    oldest = value(found, "oldest_queued_run_age_seconds")
    assert before - created <= oldest <= after - created
    assert value(found, "oldest_waiting_run_age_seconds", job_name="promo_cleanup") == oldest
    assert value(found, "oldest_waiting_run_age_seconds", job_name="tier_expiration") == 0
    assert value(found, "pool_slots", pool=WRITES_USERS) == 1
    held = named(found, "pool_slots_held")
    assert held == {
        frozenset(
            {
                ("pool", WRITES_USERS),
                ("run_id", observed.refused),
                ("job_name", "tier_expiration"),
                ("run_status", "FAILURE"),
            }
        ): 1
    }
    # No daemon has ever served this instance.
    ages = {dict(k)["daemon"]: v for k, v in named(found, "daemon_heartbeat_age_seconds").items()}
    assert set(ages) == set(observed.instance.get_required_daemon_types())
    assert all(math.isinf(age) for age in ages.values())


def test_the_outbox_metrics_say_what_it_holds(observed):
    before = db_now(observed.engine)
    found = samples(observed.scrape())
    after = db_now(observed.engine)

    held = {dict(k)["status"]: v for k, v in named(found, "email_outbox_messages").items()}
    assert held == {"pending": 2, "sending": 0, "failed": 1, "unconfirmed": 0}
    assert value(found, "email_outbox_due_messages") == 2
    with observed.engine.connect() as connection:
        due_since = connection.execute(
            select(func.min(email_outbox.c.next_attempt_at)).where(
                email_outbox.c.status == "pending"
            )
        ).scalar_one()
    oldest = value(found, "email_outbox_oldest_pending_age_seconds")
    assert (before - due_since).total_seconds() <= oldest <= (after - due_since).total_seconds()
    assert oldest > 2 * 3600 - 1


def test_with_the_app_database_gone_the_rest_is_still_served(observed, postgres):
    gone = create_app_engine(postgres.url(f"no_such_database_{uuid.uuid4().hex[:8]}"))
    try:
        text = observed.scrape(gone)
    finally:
        gone.dispose()

    found = samples(text)
    assert value(found, "source_up", source="app_database") == 0
    assert value(found, "source_up", source="dagster_storage") == 1
    assert named(found, "email_outbox_messages") == {}
    assert value(found, "guard_refusals_total", job_name="tier_expiration") == 1
    checked = promtool("check", "metrics", stdin=text.encode())
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, b"", b"")


# -- served over HTTP --------------------------------------------------------------------------


OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def fetch(url: str, accept: str | None = None) -> tuple[int, str, str]:
    """Status, Content-Type and body."""
    request = urllib.request.Request(url)
    if accept is not None:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def test_the_metrics_server_and_the_admin_api_serve_them_without_a_token(observed, tmp_path):
    environment = cli_environment(
        tmp_path / "state",
        DAGSTER_HOME=str(observed.home),
        DAGSTER_POSTGRES_URL=observed.dagster_url,
    )
    # Only what Deployment.start gives a process; no Dagster process is started here.
    servers = Deployment(tmp_path, environment, {"DATABASE_URL": observed.app_url})
    metrics_port, api_port = free_port(), free_port()
    try:
        metrics = servers.start(
            "metrics", [str(JOBS_PIPELINE), "metrics", "--port", str(metrics_port)]
        )
        api = servers.start("admin-api", [str(JOBS_PIPELINE), "admin-api", "--port", str(api_port)])
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        api_base = f"http://127.0.0.1:{api_port}"
        wait_for_url(metrics_url, metrics.popen, metrics.log, SERVER_DEADLINE_S)
        wait_for_url(f"{api_base}/api/admin/openapi.json", api.popen, api.log, SERVER_DEADLINE_S)

        for url in (metrics_url, f"{api_base}/metrics"):
            status, content_type, body = fetch(url)
            assert status == 200 and content_type.startswith("text/plain; version="), url
            found = samples(body)
            users_downgraded = {"job_name": "tier_expiration", "item": "users_downgraded"}
            assert value(found, "job_last_success_items", **users_downgraded) == DOWNGRADED, url
            assert value(found, "source_up", source="app_database") == 1, url
            # Prometheus asks for OpenMetrics first: both answer it alike.
            status, content_type, body = fetch(url, accept=OPENMETRICS)
            assert status == 200 and content_type.startswith("application/openmetrics-text"), url
            assert body.endswith("# EOF\n") and "jobs_pipeline_guard_refusals_total{" in body, url
        assert fetch(f"{api_base}/api/admin/jobs")[0] == 401  # the admins' API still asks
        assert "Prometheus metrics on http://127.0.0.1:" in metrics.log.read_text()

        metrics.popen.send_signal(signal.SIGTERM)
        assert metrics.popen.wait(timeout=STOP_DEADLINE_S) == 0, metrics.log.read_text()
    finally:
        servers.stop_all()


# -- live: a real Prometheus, the daemon killed ----------------------------------------------------


def test_prometheus_fires_daemon_down_once_the_daemon_is_killed(daemon_down):
    """The scenario ran beside the suite (`jobs_pipeline_tests/support/daemon_down.py`): the
    deployed topology, `jobs-pipeline metrics`, and /usr/bin/prometheus evaluating the
    shipped rules file as it is. While the daemon ran, the rule evaluated and did not fire;
    once it was killed, it fired, for each daemon type seen, saying what to do.
    """
    assert "error" not in daemon_down, daemon_down.get("error")
    heartbeats = daemon_down["heartbeats before"]
    assert heartbeats and all(float(series["value"][1]) < 300 for series in heartbeats), heartbeats
    assert daemon_down["rule before"] == {"health": "ok", "state": "inactive"}
    assert daemon_down["firing before"] == []
    firing = daemon_down["firing after"]
    daemons = {series["metric"]["daemon"] for series in heartbeats}
    assert firing and {alert["labels"]["daemon"] for alert in firing} <= daemons, firing
    for alert in firing:
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["job"] == "jobs-pipeline"
        assert "Start `dagster-daemon run`" in alert["annotations"]["description"]
    # Not before the rule's 5 minutes: the oldest heartbeat's age at the kill (as last
    # scraped, up to a 5 s scrape and a 1 s evaluation stale) and the wait after it make 5
    # minutes at least. A busy machine makes the daemon beat late: measured from the kill
    # alone, the wait would be shorter.
    age_at_kill = daemon_down["oldest heartbeat age at the kill"]
    assert daemon_down["fired after seconds"] + age_at_kill > 300 - 6, daemon_down
    assert [series["value"][1] for series in daemon_down["storage up"]] == ["1"]


def test_no_secret_is_in_the_scrape(observed):
    """The database URLs' passwords (none here) and users' emails never appear."""
    text = observed.scrape()
    with observed.engine.connect() as connection:
        emails = connection.execute(select(email_outbox.c.recipient)).scalars().all()
    assert emails and not any(email in text for email in emails)
    assert "@" not in text and "postgresql" not in text
