"""The Dagster UI of `jobs-pipeline dev`, driven in headless Chromium like an operator would.

`jobs-pipeline dev` runs for real (webserver, daemon, embedded PostgreSQL with demo data) on a
free loopback port; Playwright's Python package drives Debian's Chromium (/usr/bin/chromium,
never a downloaded browser). What the UI shows is checked against the definitions themselves
and, where the UI is not the source of truth, against the webserver's GraphQL API.

Every step leaves a screenshot in build/screenshots/ (CI keeps that folder); docs/screenshots/
holds a copy for the operators' guide.
"""

import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from playwright.sync_api import Browser, Locator, Page, ViewportSize, expect, sync_playwright

from jobs_pipeline.definitions import defs
from jobs_pipeline.jobs.discipline_stats_rollup import ASSET_KEY
from jobs_pipeline.jobs.discipline_stats_rollup import JOB_NAME as ROLLUP_JOB
from jobs_pipeline.jobs.global_override_check import JOB_NAME as OVERRIDE_JOB
from jobs_pipeline_tests.dev_server import (
    Dev,
    connect,
    graphql,
    running_dev,
    short_state_dir,
    tail,
)

CHROMIUM = Path("/usr/bin/chromium")
# As root Chromium needs --no-sandbox; without the background-networking flags it keeps
# knocking on this machine's closed network. Playwright gives it a fresh profile of its own.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1400, "height": 900}

REPOSITORY = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPOSITORY / "build" / "screenshots"

# Deadlines for waiting, never assertions about speed.
UI_DEADLINE_MS = 30_000
RUN_DEADLINE_MS = 90_000
# The daemon's backfill loop marks a backfill done some 30 s after its run ends.
BACKFILL_DEADLINE_MS = 150_000

# Contiguous on purpose: BackfillPolicy.single_run() gives one run per contiguous range of
# keys, so "03" and "07" would be two runs (seen in this UI); "03".."04" is one.
BACKFILL_SHARDS = ("03", "04")

JOBS = sorted(job.name for job in defs.resolve_all_job_defs() if not job.name.startswith("__"))
SCHEDULES = sorted(
    (s for s in defs.schedules or [] if isinstance(s, dg.ScheduleDefinition)),
    key=lambda s: s.name,
)
SENSORS = sorted(sensor.name for sensor in defs.sensors or [])


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the UI test drives Debian's Chromium (Playwright downloads"
            " no browser here). Install it with `sudo apt-get install -y chromium`"
            " (.ci/run does this on CI), then run the tests again."
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    with running_dev(short_state_dir(tmp_path_factory)) as running:
        # What the UI's "Skip" on its newsletter dialog records: no dialog over the pages.
        graphql(running, "mutation { setNuxSeen }")
        yield running


@pytest.fixture
def page(browser: Browser, dev: Dev) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT, base_url=dev.url(""))
    context.set_default_timeout(UI_DEADLINE_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


@contextmanager
def on_failure(page: Page, dev: Dev, name: str) -> Iterator[None]:
    """A failing step leaves a screenshot of where it was, and the failure the dev log's tail."""
    try:
        yield
    except Exception as error:
        page.screenshot(path=SCREENSHOTS / f"FAILED-{name}.png", animations="disabled")
        raise AssertionError(f"{name}: {error}\n--- dev log ---\n{tail(dev.log)}") from error


def screenshot(page: Page, name: str) -> None:
    # Fading dialogs and menus are shown as they end, not half-way.
    page.screenshot(path=SCREENSHOTS / f"{name}.png", animations="disabled")


def list_item(page: Page, name: str) -> Locator:
    """A row of the UI's lists (jobs, automations): the link named `name` and its controls."""
    link = page.get_by_role("link").filter(has=page.get_by_text(name, exact=True))
    return link.locator("xpath=..")


def running_switch(item: Locator) -> Locator:
    """The on/off switch at the end of an automation's row (the row's first box selects it)."""
    return item.get_by_role("checkbox").last


def show_cron(page: Page, item: Locator, cron: str) -> None:
    """Hovers a schedule's cron in words ("Scheduled At 12:15 AM UTC"): its tooltip has the cron."""
    words = item.get_by_text(re.compile(r"^Scheduled\b")).locator("[data-state]")
    words.hover()
    expect(words).to_have_attribute("data-state", re.compile("open"))
    tooltip = page.locator(f"[id='{words.get_attribute('aria-describedby')}']")
    expect(tooltip).to_contain_text(f"Cron value{cron}")


def runs(dev: Dev, *, job: str | None = None, tags: dict[str, str] | None = None) -> list[dict]:
    """Runs as the webserver reports them, with their tags as a dict."""
    filters = []
    if job is not None:
        filters.append(f"pipelineName: {json.dumps(job)}")
    if tags:
        pairs = ", ".join(
            f"{{key: {json.dumps(k)}, value: {json.dumps(v)}}}" for k, v in tags.items()
        )
        filters.append(f"tags: [{pairs}]")
    answer = graphql(
        dev,
        f"""{{ runsOrError(filter: {{{", ".join(filters)}}}) {{
            __typename ... on Runs {{ results {{ runId status tags {{ key value }} }} }}
        }} }}""",
    )["runsOrError"]
    assert answer["__typename"] == "Runs", answer
    return [
        {**run, "tags": {tag["key"]: tag["value"] for tag in run["tags"]}}
        for run in answer["results"]
    ]


def scheduled_runs(dev: Dev, job: str) -> list[dict[str, Any]]:
    """Runs a schedule of `job` started while the test ran (a tick at the top of an hour)."""
    return [run for run in runs(dev, job=job) if "dagster/schedule_name" in run["tags"]]


def test_the_jobs_their_schedules_and_running_sensors_are_listed(page: Page, dev: Dev):
    with on_failure(page, dev, "jobs"):
        page.goto("/jobs")
        for job in JOBS:
            expect(list_item(page, job)).to_be_visible()
        # Hovering a job's clock shows its schedules, each a link to the schedule's page.
        for schedule in SCHEDULES:
            list_item(page, schedule.job_name).get_by_role("button", name="schedule").hover()
            link = page.locator(f"a[href$='/schedules/{schedule.name}']")
            expect(link).to_be_visible()
            page.mouse.move(0, 0)
            expect(link).to_be_hidden()
        list_item(page, OVERRIDE_JOB).get_by_role("button", name="schedule").hover()
        expect(page.locator(f"a[href$='/schedules/{OVERRIDE_JOB}_schedule']")).to_be_visible()
        screenshot(page, "01-jobs")

    with on_failure(page, dev, "automation"):
        page.goto("/automation")
        for sensor in SENSORS:
            expect(running_switch(list_item(page, sensor))).to_be_checked()
        for schedule in SCHEDULES:
            item = list_item(page, schedule.name)
            switch = running_switch(item)
            if schedule.default_status == dg.DefaultScheduleStatus.RUNNING:
                expect(switch).to_be_checked()
            else:
                expect(switch).not_to_be_checked()
            # The list reads a cron in words ("Scheduled At 12:15 AM UTC"); hovering the
            # words shows the cron string itself.
            show_cron(page, item, str(schedule.cron_schedule))
        override_schedule = next(s for s in SCHEDULES if s.job_name == OVERRIDE_JOB)
        show_cron(
            page, list_item(page, override_schedule.name), str(override_schedule.cron_schedule)
        )
        screenshot(page, "02-automation-schedules-and-sensors")

    with on_failure(page, dev, "schedule"):
        list_item(page, override_schedule.name).get_by_role("link").click()
        expect(page.get_by_text(f"({override_schedule.cron_schedule})")).to_be_visible()
        expect(page.get_by_role("checkbox")).to_be_checked()
        screenshot(page, "03-schedule-page")


def test_a_run_launched_from_the_launchpad_succeeds_and_shows_its_result(page: Page, dev: Dev):
    with on_failure(page, dev, "launchpad"):
        page.goto("/jobs")
        list_item(page, OVERRIDE_JOB).get_by_role("link").click()
        page.get_by_role("tab", name="Launchpad").click()
        expect(page.get_by_text("No errors")).to_be_visible()
        launch = page.get_by_role("button", name="Launch Run")
        expect(launch).to_be_enabled()
        screenshot(page, "04-launchpad")
        launch.click()
        page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
        run_id = page.url.rsplit("/", 1)[1]

    with on_failure(page, dev, "run"):
        expect(page.get_by_text("Success", exact=True)).to_be_visible(timeout=RUN_DEADLINE_MS)
        (run,) = [r for r in runs(dev, job=OVERRIDE_JOB) if r["runId"] == run_id]
        assert run["status"] == "SUCCESS", run
        expect(page.get_by_text("STEP_OUTPUT", exact=True)).to_be_visible()
        screenshot(page, "05-run-success")

    with on_failure(page, dev, "result"):
        # Demo data holds an override that expired an hour ago: the first run clears it,
        # unless the hourly schedule happened to tick first and cleared it itself.
        cleared_by_schedule = any(
            r["status"] == "SUCCESS" for r in scheduled_runs(dev, OVERRIDE_JOB)
        )
        expected = ("cleared", "none") if cleared_by_schedule else ("cleared",)
        page.get_by_text("[Show JSON]").click()
        dialog = page.get_by_role("dialog").filter(has_text="result")
        expect(dialog).to_be_visible()
        shown = json.loads(dialog.get_by_text('"action"').inner_text())
        assert shown["action"] in expected, shown
        screenshot(page, "06-run-result-metadata")
        dialog.get_by_role("button", name="Close").click()


def test_a_backfill_of_two_shards_is_one_run_materializing_only_them(page: Page, dev: Dev):
    asset = "/".join(ASSET_KEY.path)
    with on_failure(page, dev, "backfill-dialog"):
        page.goto(f"/assets/{asset}")
        page.get_by_role("button", name=re.compile("Materialize…")).click()
        dialog = page.get_by_role("dialog").filter(has_text=f"Launch runs to materialize {asset}")
        expect(dialog).to_be_visible()
        dialog.get_by_text("Select a partition or create one").click()
        for shard in BACKFILL_SHARDS:
            page.get_by_role("menuitem").filter(has=page.get_by_title(shard, exact=True)).click()
        dialog.get_by_text(f"Launch runs to materialize {asset}").click()  # closes the menu
        expect(page.get_by_placeholder("Filter partitions")).to_be_hidden()
        expect(dialog.get_by_text(f"{len(BACKFILL_SHARDS)} partitions")).to_be_visible()
        expect(dialog.get_by_text("Backfills all partitions in a single run.")).to_be_visible()
        screenshot(page, "07-backfill-dialog")
        dialog.get_by_role("button", name="Launch backfill").click()
        created = page.get_by_text(re.compile(r"Created backfill \w+"))
        backfill_id = created.inner_text().split()[-1]

    with on_failure(page, dev, "backfill"):
        page.goto(f"/runs/b/{backfill_id}")
        # The page refreshes itself; "Succeeded" is also a column's name: read the Status field.
        status = page.get_by_text("Status", exact=True).locator("..")
        expect(status.get_by_text("Succeeded", exact=True)).to_be_visible(
            timeout=BACKFILL_DEADLINE_MS
        )
        expect(page.get_by_text("100% completed")).to_be_visible()
        screenshot(page, "08-backfill-succeeded")

    with on_failure(page, dev, "backfill-runs"):
        backfill_runs = runs(dev, tags={"dagster/backfill": backfill_id})
        assert len(backfill_runs) == 1, backfill_runs
        (run,) = backfill_runs
        assert run["status"] == "SUCCESS", run
        assert (
            run["tags"]["dagster/asset_partition_range_start"],
            run["tags"]["dagster/asset_partition_range_end"],
        ) == (BACKFILL_SHARDS[0], BACKFILL_SHARDS[-1])
        page.get_by_role("tab", name="Runs").click()
        expect(page.get_by_text(run["runId"][:8])).to_be_visible()
        screenshot(page, "09-backfill-one-run")

    with on_failure(page, dev, "materializations"):
        answer = graphql(
            dev,
            f"""{{ assetOrError(assetKey: {{path: {json.dumps(ASSET_KEY.path)}}}) {{
                ... on Asset {{ assetMaterializations(limit: 1000) {{ partition runId }} }}
            }} }}""",
        )
        # The daily schedule materializes every shard at 01:00 UTC: leave its runs aside.
        scheduled = {r["runId"] for r in scheduled_runs(dev, ROLLUP_JOB)}
        materialized = sorted(
            (event["partition"], event["runId"])
            for event in answer["assetOrError"]["assetMaterializations"]
            if event["runId"] not in scheduled
        )
        assert materialized == [(shard, run["runId"]) for shard in BACKFILL_SHARDS]
        if not scheduled:
            # The rollup wrote rows for the users of those shards and nobody else.
            with connect(dev.state_dir / "pgdata", "app") as app:
                shards = app.execute(
                    "SELECT DISTINCT get_byte(uuid_send(user_id), 15) % 16"
                    " FROM user_discipline_stats ORDER BY 1"
                ).fetchall()
            assert [f"{shard:02d}" for (shard,) in shards] == list(BACKFILL_SHARDS)

        page.goto(f"/assets/{asset}?view=partitions")
        if not scheduled:
            expect(page.get_by_text(f"Materialized ({len(BACKFILL_SHARDS)})")).to_be_visible()
        page.get_by_text(BACKFILL_SHARDS[0], exact=True).first.click()
        expect(page.get_by_text("usersUpdated").first).to_be_visible()
        screenshot(page, "10-asset-partitions")
