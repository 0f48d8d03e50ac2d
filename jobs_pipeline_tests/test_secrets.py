"""No secret anywhere: runs (successful, failed, unable to connect), the CLI, the admin
API and the alerts, all with real secrets in the environment; then everything they
wrote is read back and searched for each secret.
"""

import json
import logging
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from psycopg import sql

from jobs_pipeline.definitions import defs
from jobs_pipeline.jobs.discipline_stats_rollup import ALL_SHARDS_TAGS
from jobs_pipeline.jobs.email_delivery import email_delivery_job
from jobs_pipeline.jobs.global_override_check import global_override_check_job
from jobs_pipeline.jobs.promo_cleanup import promo_cleanup_job
from jobs_pipeline.jobs.tier_expiration import tier_expiration_job
from jobs_pipeline.monitoring.monitoring import alert_redelivery_sensor
from jobs_pipeline.resources.alerting import AlertChannels
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.resources.mail import Mailer
from jobs_pipeline.storage.api_tokens import issue_token, token_digest
from jobs_pipeline.storage.embedded import INSTANCE_CONFIG, EmbeddedPostgres
from jobs_pipeline_tests.support.app_data import (
    add_expired_user,
    add_promo_code,
    add_redemption,
    add_user,
    db_now,
    set_override,
)
from jobs_pipeline_tests.support.deployment import running_deployment
from jobs_pipeline_tests.support.journal_data import make_journals
from jobs_pipeline_tests.support.processes import (
    JOBS_PIPELINE,
    cli_environment,
    free_port,
    wait_for_url,
)
from jobs_pipeline_tests.support.receivers import WebhookServer
from jobs_pipeline_tests.support.running import evaluate_failure_alert

SMTP_PASSWORD = "S3cr3t-smtp-7f1c9a"
DB_PASSWORD = "S3cr3t-db-20b4e1"
DAGSTER_DB_PASSWORD = "S3cr3t-dagsterdb-5c83d0"
HOOK_TOKEN = "S3cr3t-hook-9d2f77"
FORGED_TOKEN = "jpa_S3cr3t-forged-61e0b3"
SMTP_USER = "jobs-mailer"


def with_password(url: str, password: str) -> str:
    assert "://postgres@/" in url, url
    return url.replace("://postgres@/", f"://postgres:{password}@/", 1)


# -- an SMTP server that wants a login, keeping each message as the bytes it got -----------


@dataclass
class RawMailbox:
    messages: list[bytes] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(bytes(envelope.content))
        return "250 Message accepted for delivery"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((login, password))
        return AuthResult(success=(login, password) == (SMTP_USER, SMTP_PASSWORD))


@dataclass
class AuthSmtp:
    host: str
    port: int
    mailbox: RawMailbox


@pytest.fixture
def auth_smtp() -> Iterator[AuthSmtp]:
    mailbox = RawMailbox()
    port = free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=mailbox.authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield AuthSmtp("127.0.0.1", port, mailbox)
    finally:
        controller.stop()


# -- the setting: secrets in the environment, an instance on a folder of the test's own -----


@dataclass
class Setting:
    home: Path
    state: Path
    app_url: str  # with DB_PASSWORD
    missing_url: str  # the same, naming a database that does not exist
    dagster_url: str  # Dagster's storage, with DAGSTER_DB_PASSWORD
    admin_token: str


@pytest.fixture
def setting(
    postgres: EmbeddedPostgres,
    app_db_url: str,
    engine: Any,
    auth_smtp: AuthSmtp,
    webhook_server: WebhookServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Setting:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(INSTANCE_CONFIG, home / "dagster.yaml")
    dagster_db = f"secrets_dagster_{uuid.uuid4().hex[:8]}"
    postgres.ensure_database(dagster_db)
    with engine.begin() as c:
        add_user(c, email="admin@example.com", role="admin")
        _, token = issue_token(c, "admin@example.com")
    app_url = with_password(app_db_url, DB_PASSWORD)
    found = Setting(
        home=home,
        state=tmp_path / "state",
        app_url=app_url,
        missing_url=app_url.replace("/app_test_", "/no_such_database_", 1),
        dagster_url=with_password(
            postgres.url(dagster_db, "postgresql+psycopg2"), DAGSTER_DB_PASSWORD
        ),
        admin_token=token,
    )
    variables = {
        "DATABASE_URL": found.app_url,
        "DAGSTER_HOME": str(home),
        "DAGSTER_POSTGRES_URL": found.dagster_url,
        "JOBS_PIPELINE_STATE_DIR": str(found.state),
        "SMTP_HOST": auth_smtp.host,
        "SMTP_PORT": str(auth_smtp.port),
        "SMTP_USERNAME": SMTP_USER,
        "SMTP_PASSWORD": SMTP_PASSWORD,
        "SMTP_FROM": "jobs@example.com",
        "ALERT_EMAIL_TO": "ops@example.com",
        # The receiver answers any path: the secret path segment is part of the address.
        "ALERT_WEBHOOK_URL": f"{webhook_server.url}/{HOOK_TOKEN}",
        "DAGSTER_WEBSERVER_URL": "http://dagster.example:3000",
        "ADMIN_API_TOKEN": token,
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return found


def mailer_from_environment(smtp: AuthSmtp) -> Mailer:
    """The mailer as definitions.py builds it: the password is an EnvVar, read at run time."""
    return Mailer(
        host=smtp.host,
        port=smtp.port,
        username=SMTP_USER,
        password=dg.EnvVar("SMTP_PASSWORD"),
        sender="jobs@example.com",
    )


def channels_from_environment(smtp: AuthSmtp) -> AlertChannels:
    return AlertChannels(
        mailer=mailer_from_environment(smtp),
        email_to="ops@example.com",
        webhook_url=dg.EnvVar("ALERT_WEBHOOK_URL"),
        webserver_url="http://dagster.example:3000",
    )


def database_from_environment() -> AppDatabase:
    """As definitions.py configures it. Not `url=<the URL>`: Dagster keeps a resource's
    literal values in the run's job snapshot, so the test would write the password
    itself (an EnvVar is kept by name).
    """
    return AppDatabase(url=dg.EnvVar("DATABASE_URL"), retry_delay_seconds=0.1, max_retries=1)


def fill_app_database(engine: Any) -> None:
    now = db_now(engine)
    make_journals(engine, seed=77, user_count=12)
    with engine.begin() as c:
        for _ in range(2):
            add_expired_user(c, now)
        for _ in range(10):
            add_user(c, tier="pro", tier_source="purchase")
        add_user(
            c,
            email="trial@example.com",
            tier="premium",
            tier_source="trial",
            trial_ends_at=now + timedelta(days=2),
        )
        set_override(c, {"tier": "pro", "expires_at": "2020-01-01T00:00:00Z"})
        redeemer = add_user(c)
        code = add_promo_code(c, "OLD-CODE", valid_until=now - timedelta(days=2))
        for n in range(3):
            add_promo_code(c, f"OPEN-{n}")
        add_redemption(c, code, redeemer, now - timedelta(days=400))
        add_redemption(c, code, redeemer, now - timedelta(days=3))


# -- reading back everything that was written ----------------------------------------------


@dataclass
class Corpus:
    """(where, text) of everything the runs wrote; each secret is searched in all of it."""

    pieces: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str, value: Any) -> None:
        if isinstance(value, bytes):
            self.pieces.append((where, value.decode("utf-8", errors="replace")))
            try:
                inflated = zlib.decompress(value)
            except zlib.error:
                return
            self.pieces.append((f"{where} (inflated)", inflated.decode("utf-8", "replace")))
        else:
            self.pieces.append((where, value if isinstance(value, str) else repr(value)))

    def where(self, secret: str) -> list[str]:
        return [where for where, text in self.pieces if secret in text]

    def size(self) -> int:
        return sum(len(text) for _, text in self.pieces)


def read_instance(corpus: Corpus, instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    runs = list(instance.get_runs())
    for run in runs:
        at = f"run {run.run_id[:8]} ({run.job_name})"
        corpus.add(f"{at} serialized", dg.serialize_value(run))
        corpus.add(f"{at} tags", json.dumps(dict(run.tags)))
        corpus.add(f"{at} run config", json.dumps(run.run_config, default=str))
        if run.job_snapshot_id:
            snapshot = instance.get_job_snapshot(run.job_snapshot_id)
            corpus.add(f"{at} job snapshot", dg.serialize_value(snapshot))
        if run.execution_plan_snapshot_id:
            plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
            corpus.add(f"{at} execution plan snapshot", dg.serialize_value(plan))
        for record in instance.all_logs(run.run_id):
            event = record.dagster_event
            kind = event.event_type_value if event else "log"
            piece = f"{at} event {kind}"
            corpus.add(piece, str(record))
            corpus.add(f"{piece} user_message", record.user_message)
            corpus.add(f"{piece} serialized", dg.serialize_value(record))
            if event is not None:
                data = event.event_specific_data
                corpus.add(f"{piece} data and metadata", repr(data))
                error = getattr(data, "error", None)
                if error is not None:  # failures: the whole error, its causes and stack
                    corpus.add(f"{piece} error", error.to_string())
    return runs


def read_database(corpus: Corpus, url: str, label: str) -> None:
    """Every row of every table, each cell as text (bytes also inflated: snapshots)."""
    conninfo = url.replace("postgresql+psycopg2://", "postgresql://", 1)
    with psycopg.connect(conninfo) as connection:
        tables = connection.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            " AND table_type = 'BASE TABLE'"
        ).fetchall()
        for schema, table in tables:
            query = sql.SQL("SELECT * FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            for row in connection.execute(query):
                for cell in row:
                    corpus.add(f"{label} {schema}.{table}", cell)


def read_files(corpus: Corpus, folder: Path) -> int:
    count = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            corpus.add(f"file {path}", path.read_bytes())
            count += 1
    return count


# -- the test ------------------------------------------------------------------------------


def alert_the_failed_run(
    instance: dg.DagsterInstance, run_id: str, channels: AlertChannels
) -> None:
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
    evaluate_failure_alert(instance, run, channels)


def call_api(base: str, path: str, token: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(base + path, data=b"", method="POST")
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.mark.deployment
def test_no_secret_is_written_anywhere(
    setting: Setting,
    engine: Any,
    auth_smtp: AuthSmtp,
    webhook_server: WebhookServer,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    fill_app_database(engine)
    db = database_from_environment()
    mailer = mailer_from_environment(auth_smtp)
    rollup_job = defs.resolve_job_def("discipline_stats_rollup")
    failed: list[str] = []
    outputs: list[tuple[str, str]] = []

    with dg.DagsterInstance.get() as instance:
        # Successful runs, each doing real work.
        for job, tags in (
            (tier_expiration_job, None),
            (global_override_check_job, None),
            (promo_cleanup_job, None),
            (rollup_job, ALL_SHARDS_TAGS),
            (email_delivery_job, None),
        ):
            execution = job.execute_in_process(
                resources={"db": db, "mailer": mailer},
                instance=instance,
                tags=tags,
                raise_on_error=False,
            )
            assert execution.success, job.name
        # A run failing on bad data.
        with engine.begin() as c:
            set_override(c, {"tier": "gold", "expires_at": "2020-01-01T00:00:00Z"})
        malformed = global_override_check_job.execute_in_process(
            resources={"db": db}, instance=instance, raise_on_error=False
        )
        assert not malformed.success
        failed.append(malformed.run_id)
        # A run whose database is not there: the connection fails, the step retries, fails.
        with monkeypatch.context() as patched:
            patched.setenv("DATABASE_URL", setting.missing_url)
            unreachable = tier_expiration_job.execute_in_process(
                resources={"db": database_from_environment()},
                instance=instance,
                raise_on_error=False,
            )
        assert not unreachable.success
        failed.append(unreachable.run_id)

        # The command line: trial reminders queued and sent over SMTP with the login.
        environment = cli_environment(
            setting.state,
            DATABASE_URL=setting.app_url,
            DAGSTER_HOME=str(setting.home),
            DAGSTER_POSTGRES_URL=setting.dagster_url,
        )
        cli = subprocess.run(
            [str(JOBS_PIPELINE), "run", "trial-reminder"],
            env=environment,
            cwd=setting.state.parent,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert cli.returncode == 0, cli.stderr[-3000:]
        assert '"queued3d": 1' in cli.stdout and '"sent": 1' in cli.stdout
        outputs += [("cli stdout", cli.stdout), ("cli stderr", cli.stderr)]

        # The admin API, in the deployed topology (code server, webserver, daemon, all
        # given the secrets): a run that succeeds, one that fails, and a forged token.
        folder = setting.state.parent / "deployment"
        folder.mkdir()
        with running_deployment(folder, setting.app_url, setting.dagster_url) as deployment:
            port = free_port()
            server = deployment.start(
                "admin-api", [str(JOBS_PIPELINE), "admin-api", "--port", str(port)]
            )
            base = f"http://127.0.0.1:{port}"
            wait_for_url(f"{base}/api/admin/openapi.json", server.popen, server.log, 60)
            ok = call_api(base, "/api/admin/jobs/promo-cleanup", setting.admin_token)
            broken = call_api(base, "/api/admin/jobs/global-override-check", setting.admin_token)
            forged = call_api(base, "/api/admin/jobs/promo-cleanup", FORGED_TOKEN)
        assert ok[0] == 200 and ok[1]["success"] is True, ok
        assert broken[0] == 500 and "malformed" in broken[1]["error"], broken
        assert forged[0] == 401, forged
        failed.append(broken[1]["run_id"])
        outputs += [(f"api answer {n}", json.dumps(a)) for n, a in enumerate((ok, broken, forged))]

        # Alerts for every failed run: email (with the login) and the webhook, which is
        # down for the first evaluation and gets its alerts from the redelivery sensor.
        channels = channels_from_environment(auth_smtp)
        webhook_server.down = True
        for run_id in failed:
            alert_the_failed_run(instance, run_id, channels)
        webhook_server.down = False
        with dg.build_sensor_context(
            instance=instance, resources={"alerts": channels}, definitions=defs
        ) as context:
            alert_redelivery_sensor(context)

        # Everything written: the instance (runs, events, snapshots), its database raw,
        # the files under the instance's and the project's folders, the app's tables.
        corpus = Corpus()
        runs = read_instance(corpus, instance)
    read_database(corpus, setting.dagster_url, "dagster db")
    read_database(corpus, setting.app_url, "app db")
    # The test's folder: the instance's home (compute logs), the state dir, the API's log.
    files = read_files(corpus, setting.home.parent)
    for n, message in enumerate(auth_smtp.mailbox.messages):
        corpus.add(f"email {n}", message)
    for n, post in enumerate(webhook_server.posts):
        corpus.add(f"webhook post {n}", json.dumps(post))
    for where, text in outputs:
        corpus.add(where, text)
    corpus.add("python log records", caplog.text)
    captured = capfd.readouterr()
    corpus.add("test process stdout", captured.out)
    corpus.add("test process stderr", captured.err)

    # What was meant to happen did: the secrets were really used.
    # A schedule of the deployment's daemon may tick meanwhile: its runs are not counted.
    runs = [run for run in runs if "dagster/schedule_name" not in run.tags]
    statuses = {run.run_id: run.status for run in runs}
    assert len(runs) == 10 and list(statuses.values()).count(dg.DagsterRunStatus.FAILURE) == 3
    assert set(failed) <= set(statuses)
    assert set(auth_smtp.mailbox.logins) == {(SMTP_USER, SMTP_PASSWORD)}
    # 2 tier-expired emails, 1 trial reminder, 3 alerts; the deployment's daemon runs the
    # failure-rate sensor too, which may alert the jobs whose runs failed here.
    messages = [m for m in auth_smtp.mailbox.messages if b"failure rate" not in m]
    assert len(messages) == 6
    posts = [post for post in webhook_server.posts if post["kind"] != "failure rate"]
    assert sorted(post["run_id"] for post in posts) == sorted(failed)
    assert files > 0 and corpus.size() > 100_000
    # And the corpus holds what it should: errors with their text, tokens as their
    # digest, and job snapshots naming the secrets' variables. Dagster keeps a resource's
    # configured values in the run's job snapshot (shown in the UI): an EnvVar by its
    # name, a literal value whole. The CLI's run (trial_reminder) has definitions.py's
    # resources: this is where a literal secret there would show up.
    assert any("STEP_FAILURE error" in w for w in corpus.where('database "no_such_database_'))
    for variable in ("SMTP_PASSWORD", "ALERT_WEBHOOK_URL", "DATABASE_URL"):
        assert any("(trial_reminder) job snapshot" in w for w in corpus.where(variable))
    assert corpus.where(token_digest(setting.admin_token)) == ["app db jobs_pipeline.api_tokens"]

    leaks = {
        name: corpus.where(secret)
        for name, secret in (
            ("SMTP_PASSWORD", SMTP_PASSWORD),
            ("DATABASE_URL password", DB_PASSWORD),
            ("DAGSTER_POSTGRES_URL password", DAGSTER_DB_PASSWORD),
            ("ALERT_WEBHOOK_URL token", HOOK_TOKEN),
            ("admin-API token", setting.admin_token),
            ("forged admin-API token", FORGED_TOKEN),
        )
    }
    found = [f"{name} in {where}" for name, places in leaks.items() for where in places]
    assert not found, "secrets written:\n" + "\n".join(found)
