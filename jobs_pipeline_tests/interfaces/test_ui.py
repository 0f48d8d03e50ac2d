"""The Dagster UI of `jobs-pipeline dev`, driven in headless Chromium like an operator would.

`jobs-pipeline dev` runs for real (webserver, daemon, embedded PostgreSQL with demo data) on a
free loopback port; Playwright's Python package drives Debian's Chromium (/usr/bin/chromium,
never a downloaded browser). What the UI shows is checked against the definitions themselves
and, where the UI is not the source of truth, against the webserver's GraphQL API and the
app database. Every job is launched from its Launchpad, as the operators' guide says.

Every step leaves a screenshot in build/screenshots/ (CI keeps that folder); docs/screenshots/
holds a copy for the operators' guide.
"""

import json
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from jobs_pipeline.definitions import defs
from jobs_pipeline.job_parts.writers import writer_pool
from jobs_pipeline.jobs.discipline_stats_rollup import ASSET_KEY, SHARD_COUNT, WRITES
from jobs_pipeline.jobs.discipline_stats_rollup import JOB_NAME as ROLLUP_JOB
from jobs_pipeline.jobs.global_override_check import JOB_NAME as OVERRIDE_JOB
from jobs_pipeline.jobs.promo_cleanup import JOB_NAME as PROMO_JOB
from jobs_pipeline.jobs.tier_expiration import JOB_NAME as TIER_JOB
from jobs_pipeline.operator_tools.undo import JOB_NAME as UNDO_JOB
from jobs_pipeline.tags import DRY_RUN_TAG
from jobs_pipeline_tests.support.browser import (
    VIEWPORT,
    chromium,
    config_line,
    list_item,
    open_launchpad,
    set_config_value,
)
from jobs_pipeline_tests.support.deadlines import deadline
from jobs_pipeline_tests.support.dev_server import (
    Dev,
    connect,
    graphql,
    running_dev,
    short_state_dir,
)
from jobs_pipeline_tests.support.processes import tail

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPOSITORY = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPOSITORY / "build" / "screenshots"

# Deadlines for waiting, never assertions about speed.
UI_DEADLINE_MS = 30_000
RUN_DEADLINE_MS = 90_000
# The daemon's backfill loop marks a backfill done some 30 s after its run ends.
BACKFILL_DEADLINE_MS = 150_000

# The webserver marks a run SUCCESS, FAILURE or CANCELED once it has ended.
ENDED = ("SUCCESS", "FAILURE", "CANCELED")
POLL_MS = 1_000

# Contiguous on purpose: BackfillPolicy.single_run() gives one run per contiguous range of
# keys, so "03" and "07" would be two runs (seen in this UI); "03".."04" is one.
BACKFILL_SHARDS = ("03", "04")

JOBS = sorted(job.name for job in defs.resolve_all_job_defs() if not job.name.startswith("__"))
SCHEDULES = sorted(
    (s for s in defs.schedules or [] if isinstance(s, dg.ScheduleDefinition)),
    key=lambda s: s.name,
)
SENSORS = sorted(sensor.name for sensor in defs.sensors or [])
# The rollup is an asset job: its page has no Launchpad tab, and it goes its own ways below;
# undo_run needs the id of an earlier run, so it comes after the others.
PLAIN_JOBS = [job for job in JOBS if job not in (ROLLUP_JOB, UNDO_JOB)]
# Shown by the Launchpad when a partitioned job is launched with no partition chosen.
NO_PARTITION_WARNING = "This job is partitioned. Are you sure"
# A shard whose counts the Partitions view is checked against; any of the 16 would do.
SHOWN_SHARD = "07"
# A shard launched on its own from the Launchpad; another than SHOWN_SHARD.
ONE_SHARD = "09"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


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


def run_status(dev: Dev, run_id: str) -> str:
    """What the webserver says of a run now (QUEUED, STARTED, SUCCESS...): its source of truth."""
    query = f"{{ runOrError(runId: {json.dumps(run_id)}) {{ ... on Run {{ status }} }} }}"
    answer = graphql(dev, query)
    return answer["runOrError"]["status"]


def wait_for_ends(page: Page, dev: Dev, run_ids: list[str]) -> dict[str, str]:
    """Each run's final status, once all have ended: the queue starts them in its own order
    (one run per job, one writer per table), so they are awaited together, with one deadline.
    """
    give_up = time.monotonic() + deadline(RUN_DEADLINE_MS / 1000 * max(1, len(run_ids)))
    while True:
        statuses = {run_id: run_status(dev, run_id) for run_id in run_ids}
        if all(status in ENDED for status in statuses.values()):
            return statuses
        if time.monotonic() > give_up:
            raise AssertionError(f"runs still going past their deadline: {statuses}")
        page.wait_for_timeout(POLL_MS)


def run_result(dev: Dev, run_id: str) -> str:
    """The run's result as its step recorded it: the `result` entry of its STEP_OUTPUT, as JSON."""
    answer = graphql(
        dev,
        f"""{{ logsForRun(runId: {json.dumps(run_id)}) {{ ... on EventConnection {{ events {{
            ... on ExecutionStepOutputEvent {{
                metadataEntries {{ label ... on JsonMetadataEntry {{ jsonString }} }}
            }}
        }} }} }} }}""",
    )
    (result,) = [
        entry["jsonString"]
        for event in answer["logsForRun"]["events"]
        for entry in event.get("metadataEntries", [])
        if entry["label"] == "result"
    ]
    return result


def run_messages(dev: Dev, run_id: str) -> list[str]:
    """The run's log messages, as its page shows them."""
    answer = graphql(
        dev,
        f"""{{ logsForRun(runId: {json.dumps(run_id)}) {{ ... on EventConnection {{ events {{
            ... on MessageEvent {{ message }}
        }} }} }} }}""",
    )
    return [event.get("message") or "" for event in answer["logsForRun"]["events"]]


def rollup_materializations(dev: Dev) -> list[tuple[str, str]]:
    """(shard, run id) of every materialization of the rollup's asset, oldest first."""
    answer = graphql(
        dev,
        f"""{{ assetOrError(assetKey: {{path: {json.dumps(ASSET_KEY.path)}}}) {{
            ... on Asset {{ assetMaterializations(limit: 1000) {{ partition runId }} }}
        }} }}""",
    )
    events = answer["assetOrError"]["assetMaterializations"]
    return [(event["partition"], event["runId"]) for event in reversed(events)]


def open_launchpad_missing_config(page: Page, job: str) -> None:
    """Jobs > the job > Launchpad, for a job whose config needs a value no default gives."""
    page.goto("/jobs")
    list_item(page, job).get_by_role("link").click()
    page.get_by_role("tab", name="Launchpad").click()
    expect(page.get_by_role("button", name="Launch Run")).to_be_visible()
    expect(page.get_by_text("No errors")).to_be_hidden()


def choose_partition(page: Page, partition: str) -> None:
    """Picks a partition in the Launchpad's Partition box once the job's partitions are in.

    Until they arrive the box is a stand-in that the loaded box replaces, taking a menu
    opened on it along: a click then opens nothing (seen under load in CI). The loaded box
    alone has the sort button.
    """
    box = page.get_by_placeholder("Partition")
    input_group = box.locator("xpath=../..")
    expect(input_group.get_by_role("img", name="sort_by_alpha")).to_be_visible()
    box.click()
    page.get_by_role("menuitem", name=partition, exact=True).click()


def add_config_line(page: Page, before_key: str, line: str) -> None:
    """Types a new `line` into the config editor, above the line of `before_key`."""
    config_line(page, f"{before_key}:").get_by_text(before_key, exact=True).click()
    page.keyboard.press("Home")
    page.keyboard.type(line)
    page.keyboard.press("Enter")
    expect(config_line(page, line)).to_be_visible()


def launch(page: Page, button: Locator, *, partitioned: bool = False) -> str:
    """Clicks a launch button and returns the id of the run page it leads to.

    A partitioned job launched with no partition chosen first asks "Are you sure?".
    """
    expect(page.get_by_text("No errors")).to_be_visible()
    button.click()
    if partitioned:
        question = page.get_by_role("dialog").filter(has_text=NO_PARTITION_WARNING)
        expect(question).to_be_visible()
        question.get_by_role("button", name="Confirm").click()
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
    return page.url.rsplit("/", 1)[1]


def assert_every_shard_materialized(dev: Dev, run_id: str) -> None:
    """The run recomputed all 16 shards: one materialization of each, with the run's id."""
    shards = sorted(shard for shard, run in rollup_materializations(dev) if run == run_id)
    assert shards == [f"{shard:02d}" for shard in range(SHARD_COUNT)], shards


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
        # Other rollups (the daily schedule at 01:00 UTC) may have run too: leave theirs aside.
        events = rollup_materializations(dev)
        materialized = sorted((shard, r) for shard, r in events if r == run["runId"])
        assert materialized == [(shard, run["runId"]) for shard in BACKFILL_SHARDS]
        others = {r for _shard, r in events if r != run["runId"]}
        if not others:
            # The rollup wrote rows for the users of those shards and nobody else.
            with connect(dev.state_dir / "pgdata", "app") as app:
                shards = app.execute(
                    "SELECT DISTINCT get_byte(uuid_send(user_id), 15) % 16"
                    " FROM user_discipline_stats ORDER BY 1"
                ).fetchall()
            assert [f"{shard:02d}" for (shard,) in shards] == list(BACKFILL_SHARDS)

        page.goto(f"/assets/{asset}?view=partitions")
        if not others:
            expect(page.get_by_text(f"Materialized ({len(BACKFILL_SHARDS)})")).to_be_visible()
        page.get_by_text(BACKFILL_SHARDS[0], exact=True).first.click()
        expect(page.get_by_text("usersUpdated").first).to_be_visible()
        screenshot(page, "10-asset-partitions")

    with on_failure(page, dev, "backfill-pool"):
        # A backfill runs as Dagster's asset job, yet waits for a running rollup: the asset's
        # step takes the one slot of the pool of the table it writes, whichever job runs it.
        pool = writer_pool(WRITES[0])
        answer = graphql(
            dev,
            f"""{{ assetNodeOrError(assetKey: {{path: {json.dumps(ASSET_KEY.path)}}}) {{
                ... on AssetNode {{ pools }} }}
                instance {{ concurrencyLimits {{ concurrencyKey slotCount }} }} }}""",
        )
        assert answer["assetNodeOrError"]["pools"] == [pool], answer
        limits = {
            limit["concurrencyKey"]: limit["slotCount"]
            for limit in answer["instance"]["concurrencyLimits"]
        }
        assert limits.get(pool) == 1, limits


def test_every_job_launches_from_its_launchpad_and_succeeds(page: Page, dev: Dev):
    launched: dict[str, str] = {}
    for job in PLAIN_JOBS:
        with on_failure(page, dev, f"launch-{job}"):
            open_launchpad(page, job)
            launched[job] = launch(page, page.get_by_role("button", name="Launch Run"))

    with on_failure(page, dev, "launch-rollup-from-its-page"):
        # The rollup's page has no Launchpad tab: its Materialize… button opens the backfill
        # dialog, and the arrow beside it offers the Launchpad, as a dialog.
        page.goto("/jobs")
        list_item(page, ROLLUP_JOB).get_by_role("link").click()
        expect(page.get_by_role("tab", name="Launchpad")).to_have_count(0)
        materialize = page.get_by_role("button", name="Materialize…")
        materialize.locator("xpath=../following-sibling::*[1]").get_by_role("button").click()
        page.get_by_role("menuitem", name="Open launchpad").click()
        dialog = page.get_by_role("dialog").filter(has_text="Launchpad (configure assets)")
        expect(dialog.get_by_text("No errors")).to_be_visible()
        screenshot(page, "11-rollup-launchpad-from-its-page")
        button = dialog.get_by_role("button", name=re.compile(r"\bMaterialize$"))
        launched[ROLLUP_JOB] = launch(page, button, partitioned=True)

    with on_failure(page, dev, "launched-runs"):
        statuses = wait_for_ends(page, dev, list(launched.values()))
        assert all(status == "SUCCESS" for status in statuses.values()), (launched, statuses)
        for job, run_id in launched.items():
            (run,) = [r for r in runs(dev, job=job) if r["runId"] == run_id]
            assert DRY_RUN_TAG not in run["tags"], run
        assert_every_shard_materialized(dev, launched[ROLLUP_JOB])

    with on_failure(page, dev, "launch-undo"):
        # undo_run takes back the ledger changes of the tier_expiration run launched above.
        open_launchpad_missing_config(page, UNDO_JOB)
        add_config_line(page, "dry_run", f"run_id: {launched[TIER_JOB]}")
        expect(page.get_by_text("No errors")).to_be_visible()
        screenshot(page, "12-undo-run-launchpad")
        undo_run_id = launch(page, page.get_by_role("button", name="Launch Run"))
        assert wait_for_ends(page, dev, [undo_run_id]) == {undo_run_id: "SUCCESS"}
        result = json.loads(run_result(dev, undo_run_id))
        assert result["undoneRun"] == launched[TIER_JOB], result
        assert result["dryRun"] is False and result["restored"] > 0, result


def test_the_rollup_launched_without_shards_recomputes_every_shard(page: Page, dev: Dev):
    with on_failure(page, dev, "rollup-launchpad"):
        page.goto("/jobs")
        list_item(page, ROLLUP_JOB).get_by_role("link").click()
        page.wait_for_url(re.compile(f"/jobs/{ROLLUP_JOB}$"))
        # No tab leads there, but the job's Launchpad is where every job's is.
        launchpad = f"{page.url}/playground"
        page.goto(launchpad)
        expect(page.get_by_placeholder("Partition")).to_be_empty()
        launch_button = page.get_by_role("button", name="Launch Run")
        expect(page.get_by_text("No errors")).to_be_visible()
        launch_button.click()
        question = page.get_by_role("dialog").filter(has_text=NO_PARTITION_WARNING)
        expect(question).to_be_visible()
        screenshot(page, "13-rollup-launch-without-shards")
        question.get_by_role("button", name="Confirm").click()
        page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
        run_id = page.url.rsplit("/", 1)[1]

    with on_failure(page, dev, "rollup-every-shard"):
        assert wait_for_ends(page, dev, [run_id]) == {run_id: "SUCCESS"}
        assert_every_shard_materialized(dev, run_id)
        with connect(dev.state_dir / "pgdata", "app") as app:
            counted = app.execute(
                "SELECT count(*), count(*) FILTER (WHERE s.user_id IS NULL) FROM users u"
                " LEFT JOIN user_discipline_stats s ON s.user_id = u.id"
            ).fetchone()
            shard_count = app.execute(
                "SELECT count(*) FROM users WHERE get_byte(uuid_send(id), 15) %% 16 = %s",
                (int(SHOWN_SHARD),),
            ).fetchone()
        assert counted is not None and shard_count is not None
        users, without_row = counted
        (in_shard,) = shard_count
        assert users > 0 and without_row == 0, (users, without_row)

    with on_failure(page, dev, "rollup-shard-counts"):
        # Each shard's materialization carries that shard's own counts, not the run's.
        assert 0 < in_shard < users, (in_shard, users)
        page.goto(f"/assets/{'/'.join(ASSET_KEY.path)}?view=partitions")
        page.get_by_text(SHOWN_SHARD, exact=True).first.click()
        # usersComputed: the shard's users; usersUpdated counts only rows whose counts
        # changed, and an earlier rollup of this test has written them already.
        row = page.locator("tr").filter(has=page.get_by_text("usersComputed", exact=True))
        expect(row.locator("td").nth(1)).to_have_text(str(in_shard))
        expect(page.get_by_text(run_id[:8]).first).to_be_visible()
        screenshot(page, "14-rollup-shard-counts")

    with on_failure(page, dev, "rollup-one-shard"):
        # With a shard chosen in the Launchpad's Partition box, the run covers only it.
        page.goto(launchpad)
        choose_partition(page, ONE_SHARD)
        expect(page.get_by_text(f"partition: {ONE_SHARD}", exact=True)).to_be_visible()
        one_shard_run = launch(page, page.get_by_role("button", name="Launch Run"))
        assert wait_for_ends(page, dev, [one_shard_run]) == {one_shard_run: "SUCCESS"}
        shards = [shard for shard, r in rollup_materializations(dev) if r == one_shard_run]
        assert shards == [ONE_SHARD], shards


def run_id_cell(page: Page, run_id: str) -> Locator:
    """A run's ID cell in the Runs list: its link and, under it, its tags (no table rows)."""
    link = page.locator(f"a[href$='/runs/{run_id}']")
    tags = page.get_by_role("button", name=re.compile(r"^View all tags"))
    return page.locator("div").filter(has=link).filter(has=tags).last


def test_a_dry_run_from_the_launchpad_is_tagged_in_the_runs_list(page: Page, dev: Dev):
    with on_failure(page, dev, "dry-run-launch"):
        open_launchpad(page, PROMO_JOB)
        set_config_value(page, "dry_run", "false", "true")
        run_id = launch(page, page.get_by_role("button", name="Launch Run"))

    with on_failure(page, dev, "dry-run-tag"):
        assert wait_for_ends(page, dev, [run_id]) == {run_id: "SUCCESS"}
        (run,) = [r for r in runs(dev, job=PROMO_JOB) if r["runId"] == run_id]
        assert run["tags"].get(DRY_RUN_TAG) == "true", run
        assert json.loads(run_result(dev, run_id))["dryRun"] is True
        # The run's Result line (the UI's metadata view sorts keys) says so first.
        (line,) = [m for m in run_messages(dev, run_id) if "] Result: " in m]
        assert line.startswith('[promo-cleanup] Result: {"dryRun": true,'), line
        page.goto("/runs")
        expect(run_id_cell(page, run_id).get_by_text(f"{DRY_RUN_TAG}: true")).to_be_visible()
        screenshot(page, "15-runs-list-dry-run")

    with on_failure(page, dev, "launchpad-keeps-dry-run"):
        # The Launchpad keeps the config last launched: the next launch is a dry run again.
        open_launchpad(page, PROMO_JOB)
        expect(config_line(page, "dry_run: true")).to_be_visible()
