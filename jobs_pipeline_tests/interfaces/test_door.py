"""The door in front of the Dagster UI, as docs/deploying.md deploys it, driven for real.

A code server, the admins' webserver, a second one started with `--read-only`, the
daemon, the admin API serving the door, and Debian's nginx with the shipped
`deploy/nginx/jobs-pipeline-door.conf`: every request goes through nginx, as a user's
would. Chromium (Debian's, through Playwright) signs in and uses the UI; the raw
requests around it are what a browser's first hop, or an attacker, would send.
"""

import json
import re
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import Engine, select, update
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as websocket_connect
from websockets.typing import Subprotocol

from jobs_pipeline.jobs.global_override_check import JOB_NAME as OVERRIDE_JOB
from jobs_pipeline.jobs.tier_expiration import JOB_NAME as TIER_JOB
from jobs_pipeline.storage.app_tables import users
from jobs_pipeline.storage.project_tables import ui_actions
from jobs_pipeline.tags import BACKFILL_TAG, DRY_RUN_TAG, TRIGGERED_BY_TAG
from jobs_pipeline_tests.support.app_data import add_user
from jobs_pipeline_tests.support.browser import (
    VIEWPORT,
    chromium,
    open_launchpad,
    set_config_value,
)
from jobs_pipeline_tests.support.deadlines import deadline
from jobs_pipeline_tests.support.deployed_runs import (
    LAUNCH_PARTITION_BACKFILL,
    backfill_params,
    deployment_databases,
    execution_params,
    launch_run,
    run_record,
    runs_where,
    wait_for,
    wait_for_end,
)
from jobs_pipeline_tests.support.deployment import HOST, running_deployment
from jobs_pipeline_tests.support.door import COOKIE, Door, open_door, other_address
from jobs_pipeline_tests.support.processes import JOBS_PIPELINE

pytestmark = [pytest.mark.browser, pytest.mark.deployment, pytest.mark.slow]

GRAPHQL_WS = Subprotocol("graphql-ws")  # the protocol the UI's live views speak
SSO_HEADER = "X-Forwarded-Email"  # oauth2-proxy's
SALT = "jobs-pipeline-ui-session"  # the door's, for cookies signed as it signs them
ADMIN = "admin@example.com"
TRADER = "trader@example.com"  # an app user, neither admin nor viewer
VIEWER = "viewer@example.com"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
UI_DEADLINE_MS = 30_000
# An open websocket re-checks its session every 30 s (RECHECK_SECONDS).
SOCKET_CLOSED_DEADLINE_S = 90
# Every path of the UI a visitor might try first, and one of its scripts.
UI_PATHS = [
    "/",
    "/runs",
    "/jobs",
    "/overview",
    "/assets",
    "/automation",
    "/deployment/daemons",
    "/locations/jobs_pipeline/jobs/tier_expiration/playground",
    "/server_info",
    "/dagit_info",
    "/favicon.svg",
]


@dataclass
class Site:
    door: Door
    engine: Engine
    tokens: dict[str, str] = field(default_factory=dict)
    token_ids: dict[str, int] = field(default_factory=dict)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(JOBS_PIPELINE), *args],
            env=self.door.deployment.code_environment,
            cwd=self.door.deployment.folder,
            capture_output=True,
            text=True,
            check=False,
            timeout=deadline(120),
        )

    def token_for(self, email: str) -> str:
        """A new token for `email`; its id goes into `token_ids`."""
        issued = self.cli("token", "create", "--email", email)
        assert issued.returncode == 0, issued.stderr
        token = issued.stdout.strip().splitlines()[-1]
        self.token_ids[token] = int(re.findall(r"token (\d+) for", issued.stderr)[0])
        return token


@pytest.fixture(scope="module")
def site(postgres, tmp_path_factory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("door")
    databases = deployment_databases(
        postgres, "door", {ADMIN: "admin", TRADER: "user", VIEWER: "user"}
    )
    engine = databases.engine
    try:
        with running_deployment(folder, databases.app_url, databases.dagster_url) as deployment:
            door = open_door(deployment, viewers=f"{VIEWER.upper()}, someone@example.com")
            # What the UI's "Skip" on its newsletter dialog records: no dialog over the pages.
            deployment.graphql("mutation { setNuxSeen }")
            site = Site(door, engine)
            site.tokens = {email: site.token_for(email) for email in (ADMIN, TRADER, VIEWER)}
            yield site
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def new_page(browser: Browser, site: Site) -> Page:
    context = browser.new_context(viewport=VIEWPORT, base_url=site.door.url)
    context.set_default_timeout(UI_DEADLINE_MS)
    return context.new_page()


def sign_in_with(page: Page, token: str) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/door/sign-in\?next=/$"))
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"door-{name}.png", animations="disabled")


# -- not signed in ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", UI_PATHS)
def test_not_signed_in_every_ui_page_is_sent_to_sign_in(site, path):
    for method in ("GET", "POST", "DELETE"):
        answer = site.door.request(method, path)
        assert answer.status == 302, (method, path, answer.status, answer.text[:300])
        assert answer.headers["Location"].startswith("/door/sign-in?next=/"), answer.headers


def test_not_signed_in_graphql_and_its_websocket_are_refused(site):
    answer = site.door.graphql(None, "{ version }")
    assert answer.status == 401
    assert answer.json()["errors"][0]["message"].startswith("Not signed in")
    assert site.door.request("GET", "/graphql?query=%7Bversion%7D").status == 401
    with pytest.raises(InvalidStatus) as refused:
        websocket_connect(f"ws://{HOST}:{site.door.port}/graphql", subprotocols=[GRAPHQL_WS])
    assert refused.value.response.status_code == 403


def test_the_sign_in_page_sends_back_to_the_page_first_asked_for(site, browser):
    page = new_page(browser, site)
    try:
        page.goto("/runs?q=1")
        expect(page).to_have_url(re.compile(r"/door/sign-in\?next=/runs%3Fq%3D1$"))
        page.get_by_label("API token").fill(site.tokens[ADMIN])
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(re.compile(r"/runs\?q=1$"))
    finally:
        page.context.close()


# -- who may pass -------------------------------------------------------------------------------


def test_a_non_admin_token_is_refused_with_a_page_that_says_why(site, browser):
    page = new_page(browser, site)
    try:
        sign_in_with(page, site.tokens[TRADER])
        expect(page.get_by_role("alert")).to_contain_text(
            f"{TRADER} is not an admin of the app (users.role) and is not listed as a viewer"
        )
        screenshot(page, "non-admin-refused")
        assert not [c for c in page.context.cookies() if c["name"] == COOKIE]
        page.goto("/runs")
        expect(page).to_have_url(re.compile(r"/door/sign-in"))
    finally:
        page.context.close()


def test_an_unknown_token_is_refused(site):
    answer = site.door.sign_in("jpa_not-a-token-anyone-was-given")
    assert answer.status == 401
    assert "not known, or has been revoked" in answer.text
    assert answer.cookie(COOKIE) is None


def test_a_viewer_sees_the_runs_and_cannot_launch(site, browser):
    admin = site.door.session_of(site.tokens[ADMIN])
    launched = site.door.graphql(admin, LAUNCH, executionParams=dry_run_params())
    run_id = launched.json()["data"]["launchPipelineExecution"]["run"]["runId"]
    page = new_page(browser, site)
    try:
        sign_in_with(page, site.tokens[VIEWER])
        expect(page).to_have_url(re.compile(r"/$"))
        page.goto("/runs")
        expect(page.locator(f"a[href$='/runs/{run_id}']").first).to_be_visible()
        screenshot(page, "viewer-runs")
        page.goto(f"/locations/jobs_pipeline/jobs/{TIER_JOB}")
        # The read-only webserver's UI offers no Launchpad, and no switch for the schedule.
        expect(page.get_by_role("tab", name="Launchpad")).to_be_disabled()
        expect(page.get_by_role("checkbox").first).to_be_disabled()
        screenshot(page, "viewer-job")
        # What the Launchpad would send, from the viewer's own page: refused, and recorded.
        answer = page.evaluate(FETCH_GRAPHQL, [LAUNCH, {"executionParams": dry_run_params()}])
        assert answer["errors"][0]["message"].startswith("viewers see the UI"), answer
    finally:
        page.context.close()
    runs = tier_runs(site)
    assert runs == [run_id], runs  # only the admin's
    (refused,) = refusals_of(site, VIEWER)
    assert refused["action"] == "launchPipelineExecution"


def test_an_admin_launches_a_dry_run_from_the_launchpad_and_is_recorded(site, browser):
    page = new_page(browser, site)
    try:
        sign_in_with(page, site.tokens[ADMIN])
        open_launchpad(page, TIER_JOB)
        set_config_value(page, "dry_run", "false", "true")
        page.get_by_role("button", name="Launch Run").click()
        page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
        run_id = page.url.rsplit("/", 1)[1]
        # The run's page says who started it, among its tags.
        page.get_by_role("button", name="View tags and config").click()
        tags = page.get_by_role("dialog")
        expect(tags.get_by_text(f"{TRIGGERED_BY_TAG}: ui:{ADMIN}")).to_be_visible()
        screenshot(page, "admin-run-tags")
    finally:
        page.context.close()

    run = wait_for_end(site.door.deployment, run_id)
    assert run["status"] == "SUCCESS", run
    assert run["tags"][TRIGGERED_BY_TAG] == f"ui:{ADMIN}"
    assert run["tags"][DRY_RUN_TAG] == "true"
    (record,) = actions_on(site, run_id)
    assert record["email"] == ADMIN
    assert record["action"] == "launchPipelineExecution"
    assert record["summary"] == f"launchPipelineExecution pipelineName={TIER_JOB}"
    kept = record["detail"]["executionParams"]["runConfigData"]
    assert kept["ops"]["downgrade_expired_tiers"]["config"]["dry_run"] is True
    assert set(kept) == {"ops"}  # the resources' config (credentials, maybe) is not kept
    assert record["outcome"] == "ok"
    assert record["run_ids"] == [run_id]
    why = site.cli("why", "--run", run_id)
    assert why.returncode == 0, why.stderr
    assert f"started by ui:{ADMIN}" in why.stdout
    assert f"in the UI, {ADMIN}: launchPipelineExecution" in why.stdout
    listed = site.cli("ui-actions")
    assert listed.returncode == 0 and run_id in listed.stdout and ADMIN in listed.stdout


def test_a_tag_the_ui_sends_cannot_name_someone_else(site):
    admin = site.door.session_of(site.tokens[ADMIN])
    spoofed = dry_run_params(tags=[{"key": TRIGGERED_BY_TAG, "value": "ui:boss@example.com"}])
    answer = site.door.graphql(admin, LAUNCH, executionParams=spoofed)
    run_id = answer.json()["data"]["launchPipelineExecution"]["run"]["runId"]
    assert run_record(site.door.deployment, run_id)["tags"][TRIGGERED_BY_TAG] == f"ui:{ADMIN}"


def test_re_executions_and_backfills_through_the_door_carry_who_started_them(site):
    deployment = site.door.deployment
    admin = site.door.session_of(site.tokens[ADMIN])
    parent = launch_run(deployment, OVERRIDE_JOB, {TRIGGERED_BY_TAG: "cli:someone"})
    assert wait_for_end(deployment, parent)["status"] == "SUCCESS"

    again = site.door.graphql(
        admin, REEXECUTE, reexecutionParams={"parentRunId": parent, "strategy": "ALL_STEPS"}
    ).json()["data"]["launchPipelineReexecution"]
    assert again["__typename"] == "LaunchRunSuccess", again
    child = again["run"]["runId"]
    assert run_record(deployment, child)["tags"][TRIGGERED_BY_TAG] == f"ui:{ADMIN}"
    assert [a["action"] for a in actions_on(site, child)] == ["launchPipelineReexecution"]

    backfill = site.door.graphql(
        admin, LAUNCH_PARTITION_BACKFILL, backfillParams=backfill_params(("03",))
    ).json()["data"]["launchPartitionBackfill"]
    assert backfill["__typename"] == "LaunchBackfillSuccess", backfill
    (run,) = wait_for(
        deployment,
        "the backfill's run",
        lambda: runs_where(deployment, tags={BACKFILL_TAG: backfill["backfillId"]}),
        deadline(180),
    )
    tags = {tag["key"]: tag["value"] for tag in run["tags"]}
    assert tags[TRIGGERED_BY_TAG] == f"ui:{ADMIN}"
    why = site.cli("why", "--run", run["runId"])
    assert f"started by ui:{ADMIN}, in backfill {backfill['backfillId']}" in why.stdout, why
    assert f"in the UI, {ADMIN}: launchPartitionBackfill" in why.stdout, why.stdout


def test_schedules_and_sensors_switched_runs_terminated_and_deleted_are_recorded(site):
    admin = site.door.session_of(site.tokens[ADMIN])
    repository = {"repositoryLocationName": "jobs_pipeline", "repositoryName": "__repository__"}
    schedule = {**repository, "scheduleName": "tier_expiration_schedule"}
    sensor = {**repository, "sensorName": "alert_redelivery_sensor"}

    def write(mutation: str, **variables: object) -> dict:
        answer = site.door.graphql(admin, mutation, **variables).json()
        assert "errors" not in answer, answer
        return answer["data"]

    schedule_state = write(START_SCHEDULE, scheduleSelector=schedule)["startSchedule"]
    write(STOP_SCHEDULE, id=schedule_state["scheduleState"]["id"])
    sensor_state = write(START_SENSOR, sensorSelector=sensor)["startSensor"]["sensorState"]
    write(STOP_SENSOR, id=sensor_state["id"])
    write(START_SENSOR, sensorSelector=sensor)  # as it was: running
    launched = write(LAUNCH, executionParams=dry_run_params())["launchPipelineExecution"]
    run_id = launched["run"]["runId"]
    write(TERMINATE, runIds=[run_id])
    wait_for_end(site.door.deployment, run_id)
    assert write(DELETE, runId=run_id)["deleteRun"]["__typename"] == "DeletePipelineRunSuccess"

    with site.engine.connect() as c:
        latest = c.execute(
            select(ui_actions.c.email, ui_actions.c.summary, ui_actions.c.outcome)
            .order_by(ui_actions.c.id.desc())
            .limit(8)
        ).all()
    assert list(reversed(latest)) == [
        (ADMIN, "startSchedule scheduleName=tier_expiration_schedule", "ok"),
        (ADMIN, "stopRunningSchedule instigatorName=tier_expiration_schedule", "ok"),
        (ADMIN, "startSensor sensorName=alert_redelivery_sensor", "ok"),
        (ADMIN, "stopSensor instigatorName=alert_redelivery_sensor", "ok"),
        (ADMIN, "startSensor sensorName=alert_redelivery_sensor", "ok"),
        (ADMIN, f"launchPipelineExecution jobName={TIER_JOB}", "ok"),
        (ADMIN, f"terminateRuns runIds={run_id}", "ok"),
        (ADMIN, f"deleteRun runId={run_id}", "ok"),
    ]
    assert [a["action"] for a in actions_on(site, run_id)] == [
        "launchPipelineExecution",
        "terminateRuns",
        "deleteRun",
    ]


def test_a_write_over_the_websocket_is_refused(site):
    admin = site.door.session_of(site.tokens[ADMIN])
    with open_socket(site, admin) as socket_:
        socket_.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(socket_.recv(timeout=30))["type"] == "connection_ack"
        socket_.send(
            json.dumps(
                {
                    "type": "start",
                    "id": "1",
                    "payload": {"query": "mutation { reloadWorkspace { __typename } }"},
                }
            )
        )
        refusal = json.loads(socket_.recv(timeout=30))
    assert refusal["type"] == "error"
    assert refusal["payload"]["message"] == "only subscriptions go over the websocket"


def test_behind_a_company_sign_on_the_door_takes_the_email_it_passes(site):
    """The sign-on's proxy (oauth2-proxy, say) in front of nginx names the user in a header;
    here the test is that proxy. No token, no cookie: the email's role and the viewers'
    list decide, at every request.
    """
    sso = open_door(
        site.door.deployment, viewers=VIEWER, sso_email_header=SSO_HEADER, name="door-sso"
    )

    def as_user(email: str) -> dict[str, str]:
        return {SSO_HEADER: email, "Origin": sso.url, "Content-Type": "application/json"}

    assert sso.request("GET", "/runs", headers=as_user(ADMIN)).status == 200
    assert sso.request("GET", "/runs", headers=as_user(VIEWER.upper())).status == 200
    refused = sso.request("GET", "/runs", headers=as_user(TRADER))
    assert refused.status == 403 and "is not an admin of the app" in refused.text
    stranger = sso.request("GET", "/runs", headers=as_user("nobody@example.com"))
    assert stranger.status == 403 and "is not a user of the app" in stranger.text
    unnamed = sso.request("GET", "/runs")
    assert unnamed.status == 302
    page = sso.request("GET", unnamed.headers["Location"])
    assert page.status == 401 and "company sign-on" in page.text
    assert sso.sign_in(site.tokens[ADMIN]).status == 401  # no token signs in here

    body = json.dumps({"query": LAUNCH, "variables": {"executionParams": dry_run_params()}})
    by_admin = sso.request("POST", "/graphql", body=body.encode(), headers=as_user(ADMIN))
    run_id = by_admin.json()["data"]["launchPipelineExecution"]["run"]["runId"]
    assert run_record(sso.deployment, run_id)["tags"][TRIGGERED_BY_TAG] == f"ui:{ADMIN}"
    assert [a["email"] for a in actions_on(site, run_id)] == [ADMIN]
    by_viewer = sso.request("POST", "/graphql", body=body.encode(), headers=as_user(VIEWER))
    assert by_viewer.status == 403, by_viewer.text
    assert by_viewer.json()["errors"][0]["message"].startswith("viewers see the UI")


# -- losing access ------------------------------------------------------------------------------


def test_a_revoked_token_loses_the_ui_at_its_next_request(site, browser):
    token = site.token_for(ADMIN)
    page = new_page(browser, site)
    try:
        sign_in_with(page, token)
        page.goto("/runs")
        expect(page).to_have_url(re.compile(r"/runs$"))
        cookie = session_cookie(page)
        revoked = site.cli("token", "revoke", "--id", str(site.token_ids[token]))
        assert revoked.returncode == 0, revoked.stderr

        page.goto("/jobs")
        expect(page).to_have_url(re.compile(r"/door/sign-in\?next=/jobs$"))
        expect(page.get_by_role("alert")).to_contain_text("Your session has ended")
        screenshot(page, "revoked")
    finally:
        page.context.close()
    assert site.door.graphql(cookie, "{ version }").status == 401


def test_a_demoted_admin_loses_the_ui_and_its_open_websocket(site):
    with site.engine.begin() as c:
        add_user(c, email="short.lived@example.com", role="admin")
    cookie = site.door.session_of(site.token_for("short.lived@example.com"))
    with open_socket(site, cookie) as socket_:
        socket_.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(socket_.recv(timeout=30))["type"] == "connection_ack"
        with site.engine.begin() as c:
            c.execute(
                update(users).where(users.c.email == "short.lived@example.com").values(role="user")
            )
        assert site.door.request("GET", "/runs", cookie=cookie).status == 403
        closed_at = time.monotonic()
        with pytest.raises(Exception, match="1008"):
            while True:
                socket_.recv(timeout=deadline(SOCKET_CLOSED_DEADLINE_S))
    assert time.monotonic() - closed_at < deadline(SOCKET_CLOSED_DEADLINE_S)


# -- bad input at the door ----------------------------------------------------------------------


def test_forged_tampered_and_expired_cookies_are_sent_to_sign_in(site):
    good = site.door.session_of(site.tokens[ADMIN])
    assert site.door.request("GET", "/runs", cookie=good).status == 200
    tampered = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    forged = URLSafeTimedSerializer("not the door's secret" * 3, salt=SALT)
    expired = URLSafeTimedSerializer(site.door.secret, salt=SALT, signer=SignedADayAgo)
    for cookie in (
        tampered,
        forged.dumps({"token": site.token_ids[site.tokens[ADMIN]]}),
        expired.dumps({"token": site.token_ids[site.tokens[ADMIN]]}),
        "",
        "x" * 5000,
        '"unterminated',
    ):
        answer = site.door.request("GET", "/runs", cookie=cookie)
        assert answer.status == 302, (cookie[:40], answer.status)
        assert answer.headers["Location"] == "/door/sign-in?next=/runs"
        assert site.door.graphql(cookie, "{ version }").status == 401
    malformed = site.door.request("GET", "/runs", headers={"Cookie": "jobs_pipeline_ui"})
    assert malformed.status == 302


def test_bad_requests_at_the_door_are_refused_with_the_right_status(site):
    door = site.door
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert door.sign_in("").status == 400
    no_type = door.request("POST", "/door/sign-in", body=b"token=x")
    assert no_type.status == 415, no_type.text
    too_big = door.request("POST", "/door/sign-in", body=b"token=" + b"x" * 10_000, headers=form)
    assert too_big.status == 413
    elsewhere = door.request(
        "POST",
        "/door/sign-in",
        body=b"token=x",
        headers={**form, "Origin": "https://evil.example.com"},
    )
    assert elsewhere.status == 403
    huge = door.request(
        "POST",
        "/graphql",
        cookie=door.session_of(site.tokens[ADMIN]),
        body=b"{" + b" " * (9 * 1024 * 1024) + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert huge.status == 413
    # nginx's own check is not a page of the site; asked without nginx's headers, it says so.
    assert door.request("GET", "/door/check").status == 404
    direct = door.request("GET", "/door/check", port=door.api_port)
    assert direct.status == 400
    assert door.request("GET", "/door/sign-in?next=//evil.example.com/").status == 200
    offsite = door.sign_in(site.tokens[ADMIN], next_path="//evil.example.com/")
    assert offsite.headers["Location"] == "/"


def test_writes_the_door_could_not_tag_or_record_are_refused(site):
    admin = site.door.session_of(site.tokens[ADMIN])
    inline = (
        "mutation { launchPipelineExecution(executionParams: {selector: {repositoryLocationName:"
        ' "jobs_pipeline", repositoryName: "__repository__", jobName: "tier_expiration"}})'
        " { __typename } }"
    )
    refused = site.door.graphql(admin, inline)
    assert refused.status == 400
    assert "passes executionParams as a variable" in refused.json()["errors"][0]["message"]
    batch = json.dumps([{"query": "{ version }"}, {"query": "{ version }"}]).encode()
    batched = site.door.request(
        "POST",
        "/graphql",
        cookie=admin,
        body=batch,
        headers={"Content-Type": "application/json", "Origin": site.door.url},
    )
    assert batched.status == 400
    by_get = site.door.request(
        "GET", "/graphql?query=mutation%20%7BreloadWorkspace%20%7B__typename%7D%7D", cookie=admin
    )
    assert by_get.status == 400
    assert by_get.json()["errors"][0]["message"] == "a mutation through the door is POSTed"
    elsewhere = site.door.request(
        "POST",
        "/graphql",
        cookie=admin,
        body=b'{"query": "{ version }"}',
        headers={"Content-Type": "application/json", "Origin": "https://evil.example.com"},
    )
    assert elsewhere.status == 403
    assert site.door.graphql(admin, "{ version }").status == 200  # a query passes as it is


def test_a_write_sent_as_graphql_text_is_recorded_with_what_it_names(site):
    """`application/graphql`, arguments written into the document, two fields under
    aliases: the webserver takes it, so the door records it like any other write, with
    everything it names, and passes it on as JSON.
    """
    admin = site.door.session_of(site.tokens[ADMIN])
    run_ids = []
    for _ in range(2):
        launched = site.door.graphql(admin, LAUNCH, executionParams=dry_run_params()).json()
        run_ids.append(launched["data"]["launchPipelineExecution"]["run"]["runId"])
    for run_id in run_ids:
        wait_for_end(site.door.deployment, run_id)
    first, second = run_ids
    deleted = site.door.request(
        "POST",
        "/graphql",
        cookie=admin,
        body=(
            f'mutation {{ first: deleteRun(runId: "{first}") {{ __typename }}'
            f' second: deleteRun(runId: "{second}") {{ __typename }} }}'
        ).encode(),
        headers={"Content-Type": "application/graphql", "Origin": site.door.url},
    )
    assert deleted.status == 200, deleted.text
    assert deleted.json()["data"] == {
        "first": {"__typename": "DeletePipelineRunSuccess"},
        "second": {"__typename": "DeletePipelineRunSuccess"},
    }
    for run_id in run_ids:
        gone = site.door.deployment.graphql(
            "query Gone($runId: ID!) { runOrError(runId: $runId) { __typename } }", runId=run_id
        )
        assert gone["runOrError"]["__typename"] == "RunNotFoundError"
    (record,) = [a for a in actions_on(site, first) if a["action"] == "deleteRun, deleteRun"]
    assert (record["email"], record["summary"], record["outcome"]) == (
        ADMIN,
        f"deleteRun, deleteRun runId={first},{second}",
        "ok",
    )
    assert record["run_ids"] == run_ids
    assert record["detail"] == {
        "operationName": None,
        "first": {"runId": first},
        "second": {"runId": second},
    }


def test_on_this_machine_the_cookie_is_httponly_and_strict_over_plain_http(site):
    local = site.door.sign_in(site.tokens[ADMIN])
    attributes = local.headers["Set-Cookie"].lower()
    for attribute in ("httponly", "samesite=strict", "max-age=28800", "path=/"):
        assert attribute in attributes, attributes
    assert "secure" not in attributes  # http://127.0.0.1 would never send it back


def test_the_webservers_and_the_api_are_not_reachable_from_another_address(site):
    address = other_address()
    door = site.door
    for port in (door.deployment.webserver_port, door.read_only_port, door.api_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, port), timeout=10)
    assert door.request("GET", "/server_info", port=door.deployment.webserver_port).status == 200


def test_nothing_logged_would_let_anyone_in(site):
    cookie = site.door.session_of(site.tokens[ADMIN])
    site.door.request("GET", "/runs", cookie=cookie)
    site.door.sign_in("jpa_a-guess-that-is-wrong")
    logs = site.door.logs()
    for token in site.tokens.values():
        assert token not in logs
    assert cookie not in logs and cookie.split(".")[0] not in logs
    assert site.door.secret not in logs
    assert "jpa_a-guess-that-is-wrong" not in logs
    assert "unknown or revoked token" in logs  # the failure itself is logged


# -- what the door does not understand, it refuses ----------------------------------------------

LIMIT_KEY = "door-test-key"
SET_LIMIT = f'mutation {{ setConcurrencyLimit(concurrencyKey: "{LIMIT_KEY}", limit: 3) }}'
# Every spelling nginx takes to the UI's GraphQL, and the door's own route.
GRAPHQL_PATHS = ["/graphql", "//graphql", "/./graphql", "/%67raphql", "/door/../graphql"]
NEITHER_JSON_NOR_GRAPHQL = [
    ("text/plain", b""),
    (None, b""),
    ("application/x-www-form-urlencoded", b""),
    ("multipart/form-data; boundary=x", b"--x--\r\n"),
    ("application/json", b'{"query": "{ version }"}'),
]


def test_a_write_in_the_url_of_a_post_is_refused_on_every_path_and_recorded(site):
    """Finding 1: the webserver reads a POST whose body is neither JSON nor GraphQL from
    its query string; the door refuses any POST with parameters in its URL."""
    admin = site.door.session_of(site.tokens[ADMIN])
    before = refused_count(site, ADMIN)
    url_write = urllib.parse.urlencode({"query": SET_LIMIT})
    tried = 0
    for path in [*GRAPHQL_PATHS, "/door/graphql"]:
        for content_type, body in NEITHER_JSON_NOR_GRAPHQL:
            headers = {"Origin": site.door.url}
            if content_type is not None:
                headers["Content-Type"] = content_type
            answer = site.door.request(
                "POST", f"{path}?{url_write}", cookie=admin, body=body, headers=headers
            )
            tried += 1
            assert answer.status == 400, (path, content_type, answer.status, answer.text)
            assert "not in the URL's parameters" in answer.text
    launch = urllib.parse.urlencode(
        {"query": LAUNCH, "variables": json.dumps({"executionParams": dry_run_params()})}
    )
    by_url = site.door.request(
        "POST", f"/graphql?{launch}", cookie=admin, headers={"Content-Type": "text/plain"}
    )
    assert by_url.status == 400
    assert concurrency_limit(site) is None  # the limit was never set
    assert refused_count(site, ADMIN) - before == tried + 1
    (latest,) = refusals_of(site, ADMIN)[-1:]
    assert latest["detail"]["urlParameters"] == ["query", "variables"]
    assert "launchPipelineExecution" in latest["detail"]["tried"]
    listed = site.cli("ui-actions", "--limit", "3")
    assert listed.returncode == 0 and "refused: a GraphQL POST" in listed.stdout, listed.stdout


def test_a_content_type_naming_two_formats_is_refused_and_recorded(site):
    """Finding 2: a content type the door might read as GraphQL and the webserver as JSON."""
    admin = site.door.session_of(site.tokens[ADMIN])
    body = json.dumps({"query": SET_LIMIT}).encode()
    for content_type in (
        "application/graphql; x=application/json",
        "application/json, application/graphql",
        "application/graphql+json;application/json",
    ):
        answer = site.door.request(
            "POST",
            "/graphql",
            cookie=admin,
            body=body,
            headers={"Content-Type": content_type, "Origin": site.door.url},
        )
        assert answer.status == 415, (content_type, answer.text)
    assert concurrency_limit(site) is None
    first, _, _ = refusals_of(site, ADMIN)[-3:]
    assert first["detail"]["contentType"] == "application/graphql; x=application/json"
    # Sent as it should be, the same write passes and is recorded.
    passed = site.door.request(
        "POST",
        "/graphql",
        cookie=admin,
        body=body,
        headers={"Content-Type": "application/json", "Origin": site.door.url},
    )
    assert passed.status == 200, passed.text
    assert concurrency_limit(site) == 3
    site.door.deployment.graphql(
        f'mutation {{ deleteConcurrencyLimit(concurrencyKey: "{LIMIT_KEY}") }}'
    )


def test_a_run_named_for_someone_else_by_a_default_in_the_document_is_refused(site):
    """Finding 3: the door tags what the webserver reads; a default it would not read is
    refused, so no run carries a name the door did not give it."""
    admin = site.door.session_of(site.tokens[ADMIN])
    before = tier_runs(site)
    params = dry_run_params(tags=[{"key": TRIGGERED_BY_TAG, "value": "ui:someone@else"}])
    defaulted = (
        f"mutation L($p: ExecutionParams = {graphql_literal(params)}) {{"
        " launchPipelineExecution(executionParams: $p) { __typename } }"
    )
    answer = site.door.graphql(admin, defaulted)
    assert answer.status == 400, answer.text
    assert "without a default in the document" in answer.json()["errors"][0]["message"]
    assert tier_runs(site) == before
    (refused,) = refusals_of(site, ADMIN)[-1:]
    assert refused["action"] == "launchPipelineExecution"


def test_signing_out_ends_the_session_wherever_its_cookie_went(site):
    """Finding 4."""
    cookie = site.door.session_of(site.tokens[ADMIN])
    assert site.door.request("GET", "/runs", cookie=cookie).status == 200
    out = site.door.request(
        "POST",
        "/door/sign-out",
        cookie=cookie,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": site.door.url},
    )
    assert out.status == 303 and out.headers["Location"] == "/door/sign-in"
    copied = site.door.request("GET", "/runs", cookie=cookie)
    assert copied.status == 302 and copied.headers["Location"].startswith("/door/sign-in")
    assert site.door.graphql(cookie, "{ version }").status == 401
    again = site.door.session_of(site.tokens[ADMIN])  # the token itself still signs in
    assert site.door.request("GET", "/runs", cookie=again).status == 200


def test_a_sign_in_over_plain_http_from_elsewhere_is_refused_whatever_host_it_names(site):
    """Finding 6: `Host: localhost` from another address is not this machine."""
    for headers in ({"Host": "localhost"}, {"Host": "127.0.0.1", "X-Forwarded-Proto": "https"}):
        answer = site.door.sign_in(site.tokens[ADMIN], headers=headers, from_elsewhere=True)
        assert answer.status == 400, (headers, answer.status, answer.text)
        assert "needs HTTPS" in answer.text
        assert answer.cookie(COOKIE) is None


def test_a_graphql_request_larger_than_the_ui_sends_is_refused(site):
    """Finding 8: the cap, at nginx and at the door itself."""
    admin = site.door.session_of(site.tokens[ADMIN])
    big = json.dumps({"query": "{ version }", "variables": {"x": "y" * 70_000}}).encode()
    headers = {"Content-Type": "application/json", "Origin": site.door.url}
    assert (
        site.door.request("POST", "/graphql", cookie=admin, body=big, headers=headers).status == 413
    )
    direct = site.door.request(
        "POST",
        "/door/graphql",
        cookie=admin,
        body=big,
        headers={**headers, "Origin": f"http://{HOST}:{site.door.api_port}"},
        port=site.door.api_port,
    )
    assert direct.status == 413
    assert "at most 64 KB" in direct.json()["errors"][0]["message"]


# -- behind a load balancer that terminates TLS ----------------------------------------------------

CLIENT = "198.51.100.7"  # the address a balancer says a client has


@pytest.fixture(scope="module")
def balanced(site) -> Door:
    """The door behind a load balancer (this machine's other address, which the test
    plays): UI_TRUSTED_PROXIES names it, nginx's real_ip takes the client's address from it.
    """
    return open_door(site.door.deployment, viewers=VIEWER, behind_balancer=True, name="door-lb")


def through_balancer(client: str, https: bool = True) -> dict[str, str]:
    return {"X-Forwarded-For": client, "X-Forwarded-Proto": "https" if https else "http"}


def test_behind_the_documented_balancer_sign_in_works_and_the_cookie_is_secure(site, balanced):
    """Finding 7: the balancer's X-Forwarded-Proto reaches the door, which believes it of
    the balancer only."""
    signed_in = balanced.sign_in(
        site.tokens[ADMIN], headers=through_balancer(CLIENT), from_elsewhere=True
    )
    assert signed_in.status == 303, signed_in.text
    attributes = signed_in.headers["Set-Cookie"].lower()
    for attribute in ("httponly", "secure", "samesite=strict", "max-age=28800"):
        assert attribute in attributes, attributes
    cookie = signed_in.cookie(COOKIE)
    runs = balanced.request(
        "GET", "/runs", cookie=cookie, headers=through_balancer(CLIENT), from_elsewhere=True
    )
    assert runs.status == 200
    plain = balanced.sign_in(
        site.tokens[ADMIN], headers=through_balancer(CLIENT, https=False), from_elsewhere=True
    )
    assert plain.status == 400 and "needs HTTPS" in plain.text
    assert f"signed in as admin from {CLIENT}" in balanced.logs()


def test_guessing_tokens_is_slowed_and_a_person_never_meets_the_limit(site, balanced):
    """Finding 5: per client address, as the balancer names it."""
    guesser = through_balancer("198.51.100.66")
    statuses = [
        balanced.sign_in(f"jpa_guess-{n}", headers=guesser, from_elsewhere=True).status
        for n in range(40)
    ]
    assert set(statuses) == {401, 429}, statuses
    assert 10 <= statuses.count(401) <= 14, statuses  # the burst, and what the rate refilled
    assert statuses[-1] == 429
    slowed = balanced.sign_in(site.tokens[ADMIN], headers=guesser, from_elsewhere=True)
    assert slowed.status == 429 and "Too many sign-ins" in slowed.text
    person = through_balancer("198.51.100.77")
    mistyped = [
        balanced.sign_in(token, headers=person, from_elsewhere=True).status
        for token in ("jpa_typo", "jpa_typo-again", site.tokens[ADMIN])
    ]
    assert mistyped == [401, 401, 303]


# -- helpers --------------------------------------------------------------------------------------


class SignedADayAgo(TimestampSigner):
    """Signs as the door does, a working day and a minute ago."""

    def get_timestamp(self) -> int:
        return int(time.time()) - 8 * 3600 - 60


def session_cookie(page: Page) -> str:
    (cookie,) = [c["value"] for c in page.context.cookies() if c["name"] == COOKIE]
    return cookie


def open_socket(site: Site, cookie: str) -> ClientConnection:
    return websocket_connect(
        f"ws://{HOST}:{site.door.port}/graphql",
        subprotocols=[GRAPHQL_WS],
        additional_headers={"Cookie": f"{COOKIE}={cookie}", "Origin": site.door.url},
        open_timeout=30,
    )


def refusals_of(site: Site, email: str) -> list[dict]:
    """What the door refused of `email`, oldest first."""
    with site.engine.connect() as c:
        rows = c.execute(
            select(ui_actions)
            .where(ui_actions.c.email == email, ui_actions.c.outcome.startswith("refused: "))
            .order_by(ui_actions.c.id)
        ).mappings()
        return [dict(row) for row in rows]


def refused_count(site: Site, email: str) -> int:
    return len(refusals_of(site, email))


def concurrency_limit(site: Site) -> int | None:
    """The limit set on LIMIT_KEY, if any."""
    limits = site.door.deployment.graphql(
        "{ instance { concurrencyLimits { concurrencyKey limit } } }"
    )
    found = [
        limit["limit"]
        for limit in limits["instance"]["concurrencyLimits"]
        if limit["concurrencyKey"] == LIMIT_KEY
    ]
    return found[0] if found else None


def graphql_literal(value: Any) -> str:
    """`value` written as a GraphQL input value, as an attacker would write it into a document."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {graphql_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(graphql_literal(v) for v in value) + "]"
    return json.dumps(value)


def actions_on(site: Site, run_id: str) -> list[dict]:
    with site.engine.connect() as c:
        rows = c.execute(
            select(ui_actions)
            .where(ui_actions.c.run_ids.contains([run_id]))
            .order_by(ui_actions.c.id)
        ).mappings()
        return [dict(row) for row in rows]


def tier_runs(site: Site) -> list[str]:
    answer = site.door.deployment.graphql(
        '{ runsOrError(filter: {pipelineName: "tier_expiration"})'
        " { ... on Runs { results { runId } } } }"
    )
    return [run["runId"] for run in answer["runsOrError"]["results"]]


def dry_run_params(tags: list[dict[str, str]] | None = None) -> dict:
    """The Launchpad's launch of a tier-expiration dry run."""
    config = {"ops": {"downgrade_expired_tiers": {"config": {"dry_run": True}}}}
    return execution_params(TIER_JOB, tags or [], config)


LAUNCH = """
mutation Launch($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}
"""

START_SCHEDULE = """
mutation Start($scheduleSelector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $scheduleSelector) {
    __typename
    ... on ScheduleStateResult { scheduleState { id } }
  }
}
"""

STOP_SCHEDULE = """
mutation Stop($id: String) {
  stopRunningSchedule(id: $id) { __typename }
}
"""

REEXECUTE = """
mutation Reexecute($reexecutionParams: ReexecutionParams) {
  launchPipelineReexecution(reexecutionParams: $reexecutionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""

START_SENSOR = """
mutation Start($sensorSelector: SensorSelector!) {
  startSensor(sensorSelector: $sensorSelector) {
    __typename
    ... on Sensor { sensorState { id } }
  }
}
"""

STOP_SENSOR = """
mutation Stop($id: String) {
  stopSensor(id: $id) { __typename }
}
"""

DELETE = """
mutation Delete($runId: String!) {
  deleteRun(runId: $runId) { __typename }
}
"""

TERMINATE = """
mutation Terminate($runIds: [String!]!) {
  terminateRuns(runIds: $runIds) { __typename }
}
"""

# Run in the page: a GraphQL POST as the UI's own code makes it, with the page's cookie.
FETCH_GRAPHQL = """
async ([query, variables]) => {
  const answer = await fetch('/graphql', {
    method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({query, variables}),
  });
  return await answer.json();
}
"""
