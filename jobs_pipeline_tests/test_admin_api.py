"""The admin HTTP API, served for real by `jobs-pipeline admin-api`, over real HTTP."""

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from sqlalchemy import Engine, update

from jobs_pipeline.app_database_setup import create_app_schema
from jobs_pipeline.app_tables import global_config, users
from jobs_pipeline.database import create_app_engine
from jobs_pipeline.schema_migrations import upgrade
from jobs_pipeline_tests.app_data import add_expired_user, add_user, db_now, set_override
from jobs_pipeline_tests.processes import (
    JOBS_PIPELINE,
    cli_environment,
    free_port,
    kill_groups,
    tail,
    wait_for_url,
)


@dataclass
class Api:
    base: str
    engine: Engine
    env: dict[str, str]
    log: Path
    dagster_home: Path
    cwd: Path

    def call(
        self, method: str, path: str, token: str | None = None, body: bytes | None = None
    ) -> tuple[int, Any]:
        request = urllib.request.Request(self.base + path, data=body, method=method)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(JOBS_PIPELINE), *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            check=False,
        )

    def token_for(self, email: str) -> str:
        issued = self.cli("token", "create", "--email", email)
        assert issued.returncode == 0, issued.stderr
        return issued.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def api(postgres, tmp_path_factory) -> Iterator[Api]:
    folder = tmp_path_factory.mktemp("api")
    postgres.ensure_database("admin_api_app")
    postgres.ensure_database("admin_api_dagster")
    url = postgres.url("admin_api_app")
    engine = create_app_engine(url)
    create_app_schema(engine)
    upgrade(url)
    with engine.begin() as c:
        add_user(c, email="admin@example.com", role="admin")
        add_user(c, email="trader@example.com", role="user")
        add_user(c, email="boss@example.com", role="admin")
    home = folder / "dagster_home"
    home.mkdir()
    shutil.copyfile(Path(__file__).resolve().parents[1] / "dagster.yaml", home / "dagster.yaml")
    env = cli_environment(
        folder / "state",
        DATABASE_URL=url,
        DAGSTER_HOME=str(home),
        DAGSTER_POSTGRES_URL=postgres.url("admin_api_dagster", "postgresql+psycopg2"),
    )
    port = free_port()
    log = folder / "api.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [str(JOBS_PIPELINE), "admin-api", "--port", str(port)],
            env=env,
            cwd=folder,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_url(f"http://127.0.0.1:{port}/api/admin/openapi.json", server, log, 60)
        yield Api(f"http://127.0.0.1:{port}", engine, env, log, home, folder)
    finally:
        kill_groups({server.pid}, 15)
        server.wait(timeout=30)
        engine.dispose()


def test_no_token_is_401(api):
    status, body = api.call("POST", "/api/admin/jobs/global-override-check")
    assert (status, body) == (401, {"error": "Missing bearer token"})
    assert api.call("GET", "/api/admin/jobs")[0] == 401


def test_an_unknown_token_is_401_and_is_not_logged(api):
    forged = "jpa_forged-token-value-0123456789"
    status, body = api.call("POST", "/api/admin/jobs/global-override-check", token=forged)
    assert (status, body) == (401, {"error": "Invalid or revoked token"})
    assert "unknown or revoked token" in tail(api.log, 400)
    assert forged not in api.log.read_text()


def test_a_revoked_token_is_401(api):
    issued = api.cli("token", "create", "--email", "admin@example.com")
    token = issued.stdout.strip().splitlines()[-1]
    token_id = issued.stderr.split()[1]
    assert api.call("GET", "/api/admin/jobs", token=token)[0] == 200

    revoked = api.cli("token", "revoke", "--id", token_id)

    assert revoked.returncode == 0, revoked.stderr
    assert api.call("GET", "/api/admin/jobs", token=token)[0] == 401


def test_a_token_is_only_issued_for_an_existing_user(api):
    issued = api.cli("token", "create", "--email", "nobody@example.com")
    assert issued.returncode == 2
    assert "no app user has the email 'nobody@example.com'" in issued.stderr


def test_a_non_admin_is_403_and_a_demoted_admin_at_once(api):
    trader = api.token_for("trader@example.com")
    assert api.call("POST", "/api/admin/jobs/global-override-check", token=trader) == (
        403,
        {"error": "Forbidden"},
    )

    boss = api.token_for("boss@example.com")
    assert api.call("GET", "/api/admin/jobs", token=boss)[0] == 200
    with api.engine.begin() as c:
        c.execute(update(users).where(users.c.email == "boss@example.com").values(role="user"))
    assert api.call("GET", "/api/admin/jobs", token=boss) == (403, {"error": "Forbidden"})


def test_an_unknown_job_is_404(api):
    token = api.token_for("admin@example.com")
    assert api.call("POST", "/api/admin/jobs/make-coffee", token=token) == (
        404,
        {"error": "Job not found"},
    )


def test_a_run_through_the_api_is_in_the_history_with_who_triggered_it(api, monkeypatch):
    token = api.token_for("admin@example.com")
    now = db_now(api.engine)
    with api.engine.begin() as c:
        add_expired_user(c, now)

    status, body = api.call("POST", "/api/admin/jobs/tier-expiration", token=token)

    assert status == 200, body
    assert body["success"] is True and body["result"]["processed"] == 1
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", api.env["DAGSTER_POSTGRES_URL"])
    with dg.DagsterInstance.from_config(str(api.dagster_home)) as instance:
        run = instance.get_run_by_id(body["run_id"])
    assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags["jobs_pipeline/triggered_by"] == "api:admin@example.com"

    status, listing = api.call("GET", "/api/admin/jobs", token=token)
    assert status == 200
    jobs = {job["name"]: job for job in listing["jobs"]}
    assert jobs["tier-expiration"]["schedule"] == "15 0 * * *"
    assert jobs["tier-expiration"]["last_run"]["run_id"] == body["run_id"]
    assert jobs["tier-expiration"]["last_run"]["status"] == "SUCCESS"
    assert len(jobs) == 6


def test_a_dry_run_through_the_api_changes_nothing(api):
    token = api.token_for("admin@example.com")
    now = db_now(api.engine)
    with api.engine.begin() as c:
        user_id = add_expired_user(c, now)

    status, body = api.call(
        "POST", "/api/admin/jobs/tier_expiration", token=token, body=b'{"dry_run": true}'
    )

    assert status == 200 and body["result"]["dryRun"] is True
    with api.engine.connect() as c:
        tier = c.execute(users.select().where(users.c.id == user_id)).one().tier
    assert tier == "premium"


@pytest.mark.parametrize("body", [b"[1]", b"{not json", b'{"dry_run": "yes"}', b'{"force": true}'])
def test_bad_options_are_400(api, body):
    token = api.token_for("admin@example.com")
    status, answer = api.call("POST", "/api/admin/jobs/promo-cleanup", token=token, body=body)
    assert status == 400 and set(answer) == {"error"}


def test_a_failed_run_is_500_with_its_reason_and_no_trace(api):
    token = api.token_for("admin@example.com")
    with api.engine.begin() as c:
        c.execute(global_config.delete())
        set_override(c, {"tier": "gold", "expires_at": "2020-01-01T00:00:00Z"})
    try:
        status, body = api.call("POST", "/api/admin/jobs/global-override-check", token=token)
    finally:
        with api.engine.begin() as c:
            c.execute(global_config.delete())

    assert status == 500
    assert body["error"].startswith("global_config key 'global_tier_override' is malformed")
    assert "Traceback" not in body["error"] and "File " not in body["error"]
    assert set(body) == {"error", "run_id"}


def test_the_openapi_document_is_served(api):
    status, document = api.call("GET", "/api/admin/openapi.json")
    assert status == 200
    assert set(document["paths"]) == {"/api/admin/jobs", "/api/admin/jobs/{name}"}


def test_it_binds_loopback_by_default(api):
    assert api.base.startswith("http://127.0.0.1:")
    assert "Uvicorn running on http://127.0.0.1:" in api.log.read_text()


def test_no_input_makes_the_api_fail_with_a_5xx(api):
    """Property-based (schemathesis over the served OpenAPI document): whatever the
    path, body or token, the answer is never a 5xx, except a job that ran and failed,
    which says so with its run id.
    """
    schema = schemathesis.openapi.from_url(api.base + "/api/admin/openapi.json")
    token = api.token_for("admin@example.com")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) == 2

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def never_a_5xx(case: Any) -> None:
            for headers in ({"Authorization": f"Bearer {token}"}, {}):
                response = case.call(base_url=api.base, headers=headers)
                if response.status_code == 500:
                    assert set(response.json()) == {"error", "run_id"}, response.text
                else:
                    assert response.status_code < 500, response.text

        never_a_5xx()
