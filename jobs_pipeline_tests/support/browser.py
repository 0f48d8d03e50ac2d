"""Debian's Chromium, driven by Playwright, and the Dagster UI's parts the tests reach for."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, ViewportSize, expect, sync_playwright

from jobs_pipeline_tests.support.deadlines import deadline

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
# How long an `expect` waits for the UI to show what it should: Playwright's own 5 s is a
# moment on a machine the suite keeps busy.
EXPECT_DEADLINE_MS = deadline(30) * 1000


@contextmanager
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the UI test drives Debian's Chromium (Playwright downloads"
            " no browser here). Install it with `sudo apt-get install -y chromium`"
            " (.ci/run does this on CI), then run the tests again."
        )
    expect.set_options(timeout=EXPECT_DEADLINE_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def list_item(page: Page, name: str) -> Locator:
    """A row of the UI's lists (jobs, automations): the link named `name` and its controls."""
    link = page.get_by_role("link").filter(has=page.get_by_text(name, exact=True))
    return link.locator("xpath=..")


def open_launchpad(page: Page, job: str) -> None:
    """Jobs > the job > Launchpad, as the guide says; ready once the config checks out."""
    page.goto("/jobs")
    list_item(page, job).get_by_role("link").click()
    page.get_by_role("tab", name="Launchpad").click()
    expect(page.get_by_text("No errors")).to_be_visible()


def config_line(page: Page, text: str) -> Locator:
    """The config editor's line holding `text` (the editor draws each line on its own)."""
    return page.locator(".CodeMirror-line").filter(has_text=text)


def set_config_value(page: Page, key: str, old: str, new: str) -> None:
    """Types over a value in the config editor: `key: old` becomes `key: new`."""
    config_line(page, f"{key}: {old}").get_by_text(old, exact=True).dblclick()
    page.keyboard.type(new)
    expect(config_line(page, f"{key}: {new}")).to_be_visible()
