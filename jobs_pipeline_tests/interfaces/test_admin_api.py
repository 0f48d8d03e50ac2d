"""The admin HTTP API, served for real by `jobs-pipeline admin-api`, over real HTTP."""

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from sqlalchemy import Engine, update

from jobs_pipeline.storage.app_tables import global_config, users
from jobs_pipeline_tests.support.app_data import add_expired_user, db_now, set_override
from jobs_pipeline_tests.support.deadlines import deadline, wait_until
from jobs_pipeline_tests.support.deployed_runs import deployment_databases, runs_where
from jobs_pipeline_tests.support.deployment import Deployment, running_deployment
from jobs_pipeline_tests.support.processes import JOBS_PIPELINE, free_port, tail, wait_for_url

pytestmark = pytest.mark.deployment

# How long the module's API waits for a run before answering 202: a run answered 200 must
# end within it, which on a loaded machine takes longer than the default 30 s. A request
# waits for the answer longer still.
API_WAIT_S = deadline(120)


@dataclass
class Api:
    base: str
    engine: Engine
    env: dict[str, str]
    log: Path
    dagster_home: Path
    cwd: Path
    deployment: Deployment

    def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        return call(self.base, method, path, token, body, content_type)

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


def call(
    base: str,
    method: str,
    path: str,
    token: str | None = None,
    body: bytes | None = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    request = urllib.request.Request(base + path, data=body, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=API_WAIT_S + 60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def start_api(deployment: Deployment, name: str, *options: str) -> str:
    """`jobs-pipeline admin-api` beside the deployment's daemon; returns its base URL."""
    port = free_port()
    server = deployment.start(
        name, [str(JOBS_PIPELINE), "admin-api", "--port", str(port), *options]
    )
    base = f"http://127.0.0.1:{port}"
    wait_for_url(f"{base}/api/admin/openapi.json", server.popen, server.log, 60)
    return base


@pytest.fixture(scope="module")
def api(postgres, tmp_path_factory) -> Iterator[Api]:
    """The admin API in the deployed topology: a code server, the webserver and the daemon
    (whose queue runs what the API starts), and the API beside them on one instance.
    """
    folder = tmp_path_factory.mktemp("api")
    databases = deployment_databases(
        postgres,
        "admin_api",
        {"admin@example.com": "admin", "trader@example.com": "user", "boss@example.com": "admin"},
    )
    url, engine = databases.app_url, databases.engine
    try:
        with running_deployment(folder, url, databases.dagster_url) as deployment:
            base = start_api(deployment, "admin-api", "--wait-seconds", f"{API_WAIT_S:.0f}")
            env = deployment.code_environment
            yield Api(
                base,
                engine,
                env,
                deployment.processes["admin-api"].log,
                deployment.home,
                folder,
                deployment,
            )
    finally:
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


def test_token_list_shows_each_token_with_its_use_and_revocation(api):
    issued = api.cli("token", "create", "--email", "boss@example.com")
    token = issued.stdout.strip().splitlines()[-1]
    token_id = issued.stderr.split()[1]
    assert f"token revoke --id {token_id}" in issued.stderr

    def row_of(listing: str) -> list[str]:
        (row,) = [line for line in listing.splitlines() if line.split()[0] == token_id]
        return row.split("  ")

    fresh = api.cli("token", "list")
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.splitlines()[0].split() == [
        "ID",
        "EMAIL",
        "CREATED",
        "LAST",
        "USED",
        "REVOKED",
    ]
    cells = [cell.strip() for cell in row_of(fresh.stdout) if cell.strip()]
    assert cells[1] == "boss@example.com" and cells[2].endswith("UTC")
    assert cells[3:] == ["-", "-"]  # never used, not revoked

    api.call("GET", "/api/admin/jobs", token=token)
    assert api.cli("token", "revoke", "--id", token_id).returncode == 0
    used = [cell.strip() for cell in row_of(api.cli("token", "list").stdout) if cell.strip()]
    assert used[3].endswith("UTC") and used[4].endswith("UTC")
    assert token not in fresh.stdout


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
    assert jobs["tier-expiration"]["last_run"]["dry_run"] is False
    assert jobs["tier-expiration"]["priority"] == "high"
    assert len(jobs) == 7


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
    _, listing = api.call("GET", "/api/admin/jobs", token=token)
    (listed,) = [job for job in listing["jobs"] if job["dagster_job"] == "tier_expiration"]
    assert listed["last_run"]["dry_run"] is True


@pytest.mark.parametrize("body", [b"[1]", b"{not json", b'{"dry_run": "yes"}', b'{"force": true}'])
def test_bad_options_are_400(api, body):
    token = api.token_for("admin@example.com")
    status, answer = api.call("POST", "/api/admin/jobs/promo-cleanup", token=token, body=body)
    assert status == 400 and set(answer) == {"error"}


def test_a_body_sent_as_a_form_is_told_to_be_json(api):
    """`curl -d '{"dry_run": true}'` without a content type sends a form."""
    token = api.token_for("admin@example.com")
    status, answer = api.call(
        "POST",
        "/api/admin/jobs/promo-cleanup",
        token=token,
        body=b'{"dry_run": true}',
        content_type="application/x-www-form-urlencoded",
    )
    assert status == 400
    assert answer == {
        "error": "The body must be JSON, sent with Content-Type: application/json"
        " (not application/x-www-form-urlencoded)"
    }


def test_an_option_refused_is_named_as_the_body_names_it(api):
    token = api.token_for("admin@example.com")
    real = b'{"as_of": "2026-01-04T02:00:00Z"}'
    status, answer = api.call("POST", "/api/admin/jobs/promo-cleanup", token=token, body=real)
    assert (status, answer) == (
        400,
        {
            "error": "as_of applies only to dry runs (dry_run): a real run always uses the"
            " database's clock"
        },
    )
    wrong = b'{"user": "admin@example.com"}'
    status, answer = api.call("POST", "/api/admin/jobs/promo-cleanup", token=token, body=wrong)
    assert (status, answer) == (
        400,
        {"error": "user applies only to discipline-stats-rollup, not promo-cleanup"},
    )


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
    assert set(document["paths"]) == {
        "/api/admin/jobs",
        "/api/admin/jobs/{name}",
        "/api/admin/runs/{run_id}",
    }
    # Generated from the models: the body's options, and every answer of the status table.
    options = document["components"]["schemas"]["RunOptions"]
    assert set(options["properties"]) == {"dry_run", "user", "allow_large", "as_of"}
    assert options["additionalProperties"] is False
    answers = document["paths"]["/api/admin/jobs/{name}"]["post"]["responses"]
    assert set(answers) == {"200", "202", "400", "401", "403", "404", "500"}


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
    assert len(operations) == 3

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


JOBS = ("tier-expiration", "global-override-check", "promo-cleanup", "discipline-stats-rollup")


def test_six_requests_at_once_are_all_answered_and_run_through_the_queue(api, monkeypatch):
    """What hung the in-process API: runs started at once on a persistent instance."""
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", api.env["DAGSTER_POSTGRES_URL"])
    token = api.token_for("admin@example.com")
    names = [*JOBS, JOBS[0], JOBS[2]]

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        answers = list(
            pool.map(lambda name: api.call("POST", f"/api/admin/jobs/{name}", token), names)
        )

    settled = [settle(api, token, status, body) for status, body in answers]
    assert all(body["success"] is True for body in settled), settled
    run_ids = [body["run_id"] for body in settled]
    assert len(set(run_ids)) == len(names)
    with dg.DagsterInstance.from_config(str(api.dagster_home)) as instance:
        for run_id, name in zip(run_ids, names, strict=True):
            run = instance.get_run_by_id(run_id)
            assert run is not None and run.job_name == name.replace("-", "_")
            assert run.tags["jobs_pipeline/triggered_by"] == "api:admin@example.com"
            # Each went through the daemon's queue, not through the API's process.
            kinds = {record.dagster_event_type for record in instance.all_logs(run_id)}
            assert dg.DagsterEventType.RUN_ENQUEUED in kinds, (name, kinds)
            assert dg.DagsterEventType.RUN_STARTING in kinds, (name, kinds)


def settle(api: Api, token: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    """A 200 as it is; a 202 followed at its status URL until the run has ended."""
    if status == 200:
        return body
    assert status == 202, (status, body)
    give_up = time.monotonic() + deadline(120)
    while time.monotonic() < give_up:
        code, run = api.call("GET", body["status_url"], token)
        assert code == 200, run
        if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            return {"success": run["status"] == "SUCCESS", **run}
        time.sleep(1)
    raise AssertionError(f"run {body['run_id']} did not end: {run}")


def test_a_run_longer_than_the_wait_is_answered_202_and_followed_at_its_status_url(api):
    token = api.token_for("admin@example.com")
    impatient = start_api(api.deployment, "admin-api-impatient", "--wait-seconds", "0")

    status, body = call(impatient, "POST", "/api/admin/jobs/promo-cleanup", token, b"{}")

    assert status == 202, body
    assert body["status"] in ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")
    assert body["status_url"] == f"/api/admin/runs/{body['run_id']}"
    run = settle(api, token, status, body)
    assert run["status"] == "SUCCESS" and run["job"] == "promo-cleanup"
    assert set(run["result"]) >= {"codesDeactivated", "redemptionsDeleted"}
    assert api.call("GET", "/api/admin/runs/no-such-run", token) == (
        404,
        {"error": "Run not found"},
    )
    assert api.call("GET", body["status_url"])[0] == 401


def test_sigterm_stops_the_server_within_ten_seconds_with_requests_waiting(api):
    token = api.token_for("admin@example.com")
    doomed = start_api(api.deployment, "admin-api-stopped")
    process = api.deployment.processes["admin-api-stopped"]
    by_the_api = {"jobs_pipeline/triggered_by": "api:admin@example.com"}
    before = len(runs_where(api.deployment, tags=by_the_api))
    with ThreadPoolExecutor(max_workers=2) as pool:
        waiting = [
            pool.submit(call, doomed, "POST", "/api/admin/jobs/tier-expiration", token)
            for _ in range(2)
        ]
        # The requests are in, waiting for the runs they submitted.
        wait_until(
            lambda: len(runs_where(api.deployment, tags=by_the_api)) == before + 2,
            60,
            "both requests submitted their runs",
        )
        os.killpg(process.popen.pid, signal.SIGTERM)
        try:
            process.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the API did not stop within 10 s of SIGTERM:\n{tail(process.log)}")
        answers = [request.result(timeout=30) for request in waiting]

    # Answered before the server closed: the runs go on, and nothing reads as their failure.
    for status, body in answers:
        assert status == 202, body
        assert "stopping; the run goes on" in body["detail"], body
    log = tail(process.log, 200)
    assert "Traceback" not in log and "CancelledError" not in log, log
