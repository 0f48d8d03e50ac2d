"""How large are the GraphQL requests the Dagster UI itself sends?

    .venv/bin/python -m bench.ui_graphql_requests                          # its own `dev`
    .venv/bin/python -m bench.ui_graphql_requests --url http://127.0.0.1:3000

The proxy in front of the UI caps a GraphQL request's body size and its number of
GraphQL tokens, and the docs state the cap: it must leave room for the largest request
the UI sends in an operator's everyday use, and that is what this measures. Headless
Debian Chromium, driven by Playwright as the UI test drives it, goes where an operator
goes: the overview, the runs, every job's page and Launchpad, a dry run launched from a
Launchpad and watched to its end, the asset, its partitions and its backfill dialog (a
backfill of a few partitions launched from it), the automations, the deployment pages,
and the runs again. Every request the page sends to /graphql is recorded (its body's
bytes, its operation, the lexical tokens of its query as graphql-core counts them, its
variables' bytes, the step it was sent in), and so is every websocket frame it sends.

Prints one row per operation, then the websocket frames per kind, then the maxima as
one JSON line, the last line of its output. With no `--url` it runs `jobs-pipeline dev`
(embedded PostgreSQL and demo data, state in a temporary folder) for the time it takes,
and stops it, all of it, whatever happens.
"""

import argparse
import contextlib
import json
import re
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pandas as pd
from graphql.language import Lexer, Source, TokenKind
from playwright.sync_api import Browser, Locator, Page, Request, WebSocket, expect

from jobs_pipeline.jobs.discipline_stats_rollup import ASSET_KEY, SHARD_COUNT
from jobs_pipeline.jobs.global_override_check import JOB_NAME as OVERRIDE_JOB
from jobs_pipeline.operator_tools.undo import JOB_NAME as UNDO_JOB
from jobs_pipeline_tests.support.browser import (
    VIEWPORT,
    chromium,
    list_item,
    open_launchpad,
    set_config_value,
)
from jobs_pipeline_tests.support.deadlines import deadline
from jobs_pipeline_tests.support.dev_server import running_dev
from jobs_pipeline_tests.support.processes import tail

# Deadlines for waiting, never figures of speed.
UI_DEADLINE_MS = deadline(30) * 1000
# The first page waits for the UI to load the code location's definitions.
FIRST_PAGE_DEADLINE_MS = deadline(180) * 1000
RUN_DEADLINE_MS = deadline(120) * 1000
# The daemon's backfill loop marks a backfill done some 30 s after its run ends.
BACKFILL_DEADLINE_MS = deadline(180) * 1000
QUIET_DEADLINE_S = deadline(60)
# A page has settled once no request of it has been in flight for this long.
QUIET_S = 0.5
POLL_MS = 100

# undo_run's run_id has no default: its Launchpad never says "No errors".
NEEDS_CONFIG = frozenset({UNDO_JOB})
ASSET = "/".join(ASSET_KEY.path)
# Contiguous, so the backfill is one run (the asset backfills a range in a single run).
BACKFILL_SHARDS = ("03", "04")
JOB_LINK = re.compile(r"^/locations/[^/]+/jobs/([^/]+)$")
RUN_PAGE = re.compile(r"/runs/[0-9a-f-]{36}$")
RUN_ENDED = re.compile(r"^RUN_(SUCCESS|FAILURE|CANCELED)$")


@dataclass
class GraphqlRequest:
    """One operation of one request to /graphql (a batched body would hold several)."""

    step: str
    method: str
    operation: str
    body_bytes: int
    tokens: int
    variables_bytes: int


@dataclass
class SentFrame:
    """One websocket frame the page sent; `kind` is its message type and operation."""

    step: str
    kind: str
    frame_bytes: int
    tokens: int


@dataclass
class Recorder:
    """What the page sends, noted as it goes, and whether any request is still in flight."""

    step: str = "start"
    requests: list[GraphqlRequest] = field(default_factory=list)
    frames: list[SentFrame] = field(default_factory=list)
    in_flight: set[Request] = field(default_factory=set)
    last_activity: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)

    def enter(self, step: str) -> None:
        seconds = time.monotonic() - self.started
        print(f"ui_graphql_requests: {seconds:5.0f} s  {step}", file=sys.stderr, flush=True)
        self.step = step

    def on_request(self, request: Request) -> None:
        self.in_flight.add(request)
        self.last_activity = time.monotonic()
        if urlsplit(request.url).path == "/graphql":
            self.requests.extend(graphql_requests(request, self.step))

    def on_request_done(self, request: Request) -> None:
        self.in_flight.discard(request)
        self.last_activity = time.monotonic()

    def on_websocket(self, websocket: WebSocket) -> None:
        websocket.on("framesent", self.on_frame_sent)

    def on_frame_sent(self, payload: str | bytes) -> None:
        self.frames.append(sent_frame(payload, self.step))

    def watch(self, page: Page) -> None:
        page.on("request", self.on_request)
        page.on("requestfinished", self.on_request_done)
        page.on("requestfailed", self.on_request_done)
        page.on("websocket", self.on_websocket)


def token_count(query: str) -> int:
    """GraphQL lexical tokens, as a parser counts them against a limit: all but EOF
    (comments are no tokens: the lexer skips them).
    """
    lexer = Lexer(Source(query))
    count = 0
    while lexer.advance().kind != TokenKind.EOF:
        count += 1
    return count


def json_bytes(value: Any) -> int:
    """`value`'s size as the browser's JSON.stringify writes it."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def operations_of(request: Request) -> list[dict[str, Any]]:
    """The operations a request carries: a GET's URL parameters, or a POST's JSON body."""
    if request.method == "GET":
        params = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}
        variables = json.loads(params.get("variables") or "null")
        return [{**params, "variables": variables}]
    try:
        body = json.loads(request.post_data_buffer or b"null")
    except ValueError:
        return [{}]
    return [item for item in body if isinstance(item, dict)] if isinstance(body, list) else [body]


def graphql_requests(request: Request, step: str) -> list[GraphqlRequest]:
    body_bytes = len(request.post_data_buffer or b"")
    return [
        GraphqlRequest(
            step=step,
            method=request.method,
            operation=str(operation.get("operationName") or "(unnamed)"),
            body_bytes=body_bytes,
            tokens=token_count(str(operation.get("query") or "")),
            variables_bytes=json_bytes(operation.get("variables") or {}),
        )
        for operation in operations_of(request) or [{}]
    ]


def sent_frame(payload: str | bytes, step: str) -> SentFrame:
    """A frame of the UI's GraphQL websocket: a protocol message, a subscription's start."""
    data = payload.encode() if isinstance(payload, str) else payload
    try:
        message = json.loads(data)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        return SentFrame(step=step, kind="(not JSON)", frame_bytes=len(data), tokens=0)
    inner = message.get("payload")
    inner = inner if isinstance(inner, dict) else {}
    operation = inner.get("operationName")
    kind = f"{message.get('type')} {operation}" if operation else str(message.get("type"))
    return SentFrame(
        step=step,
        kind=kind,
        frame_bytes=len(data),
        tokens=token_count(str(inner.get("query") or "")),
    )


def quiet(page: Page, recorder: Recorder) -> None:
    """Waits until no request of the page has been in flight for QUIET_S.

    Playwright's "networkidle" is a state of the document's load: a click that changes
    the UI's route leaves it as it was, so the UI's own requests are awaited here.
    """
    give_up = time.monotonic() + QUIET_DEADLINE_S
    while recorder.in_flight or time.monotonic() - recorder.last_activity < QUIET_S:
        if time.monotonic() > give_up:
            stuck = sorted(request.url for request in recorder.in_flight)
            print(f"ui_graphql_requests: still in flight, going on: {stuck}", file=sys.stderr)
            return
        page.wait_for_timeout(POLL_MS)  # lets Playwright deliver the page's events


def settle(page: Page, recorder: Recorder, ready: Locator, timeout: float | None = None) -> None:
    expect(ready).to_be_visible(timeout=timeout)
    quiet(page, recorder)


def visit(
    page: Page,
    recorder: Recorder,
    path: str,
    ready: Locator,
    step: str | None = None,
    timeout: float | None = None,
) -> None:
    recorder.enter(step or path)
    page.goto(path)
    settle(page, recorder, ready, timeout)


def run_or_none_link(page: Page) -> Locator:
    """A run's link in a runs list, or the list's word that it has none."""
    run = page.locator("a[href^='/runs/']").filter(has_text=re.compile(r"^[0-9a-f]{8}$"))
    return run.first.or_(page.get_by_text(re.compile(r"^No runs")).first)


def listed_jobs(page: Page, recorder: Recorder) -> dict[str, str]:
    """The UI's Jobs list: each job's name and its page's path."""
    visit(page, recorder, "/jobs", page.locator("a[href*='/jobs/']").first)
    hrefs = page.locator("a[href*='/jobs/']").evaluate_all(
        "links => links.map(link => link.getAttribute('href'))"
    )
    return {
        found.group(1): href for href in hrefs if (found := JOB_LINK.match(str(href))) is not None
    }


def open_launchpad_missing_config(page: Page, job: str) -> None:
    """Jobs > the job > Launchpad, for a job whose config needs a value no default gives."""
    page.goto("/jobs")
    list_item(page, job).get_by_role("link").click()
    page.get_by_role("tab", name="Launchpad").click()
    expect(page.get_by_text("Missing required config entry").first).to_be_visible()


def open_asset_job_launchpad(page: Page) -> None:
    """An asset job's page has no Launchpad tab: the arrow beside its Materialize… button
    offers the Launchpad, as a dialog.
    """
    materialize = page.get_by_role("button", name="Materialize…")
    materialize.locator("xpath=../following-sibling::*[1]").get_by_role("button").click()
    page.get_by_role("menuitem", name="Open launchpad").click()
    dialog = page.get_by_role("dialog").filter(has_text="Launchpad (configure assets)")
    expect(dialog.get_by_text("No errors")).to_be_visible()


def visit_job(page: Page, recorder: Recorder, job: str, path: str) -> None:
    """The job's page, then its Launchpad, however the job's kind reaches it."""
    visit(page, recorder, path, page.get_by_role("tab", name="Runs"), step=f"job {job}")
    if page.get_by_role("tab", name="Launchpad").count() == 0:
        recorder.enter(f"launchpad {job} (asset job, dialog)")
        open_asset_job_launchpad(page)
    elif job in NEEDS_CONFIG:
        recorder.enter(f"launchpad {job}")
        open_launchpad_missing_config(page, job)
    else:
        recorder.enter(f"launchpad {job}")
        open_launchpad(page, job)
    quiet(page, recorder)


def launch_dry_run(page: Page, recorder: Recorder) -> None:
    """A dry run of global_override_check from its Launchpad, watched on its run page until
    it ends and its last events have streamed in.
    """
    recorder.enter(f"launchpad {OVERRIDE_JOB}: dry run")
    open_launchpad(page, OVERRIDE_JOB)
    set_config_value(page, "dry_run", "false", "true")
    expect(page.get_by_text("No errors")).to_be_visible()
    page.get_by_role("button", name="Launch Run").click()
    page.wait_for_url(RUN_PAGE)
    recorder.enter(f"run page of the {OVERRIDE_JOB} dry run")
    expect(page.get_by_text(RUN_ENDED).first).to_be_visible(timeout=RUN_DEADLINE_MS)
    quiet(page, recorder)


def visit_asset(page: Page, recorder: Recorder) -> None:
    """The asset's page, its Partitions tab, and one partition's details there."""
    materialize = page.get_by_role("button", name=re.compile("Materialize…"))
    visit(page, recorder, f"/assets/{ASSET}", materialize)
    recorder.enter(f"/assets/{ASSET} partitions tab")
    page.get_by_role("tab", name="Partitions").click()
    settle(page, recorder, page.get_by_text(re.compile(r"\d+ Partitions Selected")))
    recorder.enter(f"/assets/{ASSET} partition {BACKFILL_SHARDS[0]}")
    page.get_by_text(BACKFILL_SHARDS[0], exact=True).first.click()
    settle(page, recorder, page.get_by_text("Latest materialization").first)


def backfill_dialog(page: Page) -> Locator:
    page.get_by_role("button", name=re.compile("Materialize…")).click()
    dialog = page.get_by_role("dialog").filter(has_text=f"Launch runs to materialize {ASSET}")
    expect(dialog).to_be_visible()
    return dialog


def preview_backfill_of_all_partitions(page: Page, recorder: Recorder) -> None:
    """The backfill dialog with every partition chosen, and its preview; then cancelled."""
    recorder.enter(f"/assets/{ASSET} backfill dialog, all partitions")
    dialog = backfill_dialog(page)
    quiet(page, recorder)
    dialog.get_by_role("button", name="All", exact=True).click()
    settle(page, recorder, dialog.get_by_text(f"{SHARD_COUNT} partitions", exact=True))
    dialog.get_by_text("Preview", exact=True).click()
    preview = page.get_by_role("dialog").filter(has_text="Backfill preview")
    settle(page, recorder, preview.get_by_text(f"{SHARD_COUNT} partitions", exact=True))
    preview.get_by_role("button", name="OK").click()
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()


def launch_backfill(page: Page, recorder: Recorder) -> str:
    """A backfill of BACKFILL_SHARDS from the dialog, as the UI test launches one; its id."""
    # From the asset's Overview tab: on its Partitions tab the dialog comes with the
    # partitions chosen there (all of them).
    materialize = page.get_by_role("button", name=re.compile("Materialize…"))
    visit(page, recorder, f"/assets/{ASSET}", materialize)
    recorder.enter(f"/assets/{ASSET} backfill dialog, {len(BACKFILL_SHARDS)} partitions")
    dialog = backfill_dialog(page)
    dialog.get_by_text("Select a partition or create one").click()
    for shard in BACKFILL_SHARDS:
        page.get_by_role("menuitem").filter(has=page.get_by_title(shard, exact=True)).click()
    dialog.get_by_text(f"Launch runs to materialize {ASSET}").click()  # closes the menu
    expect(dialog.get_by_text(f"{len(BACKFILL_SHARDS)} partitions", exact=True)).to_be_visible()
    dialog.get_by_role("button", name="Launch backfill").click()
    created = page.get_by_text(re.compile(r"Created backfill \w+"))
    backfill_id = created.inner_text().split()[-1]
    quiet(page, recorder)
    return backfill_id


def watch_backfill(page: Page, recorder: Recorder, backfill_id: str) -> None:
    """The backfill's page until the daemon marks it done."""
    visit(page, recorder, f"/runs/b/{backfill_id}", page.get_by_text("Status", exact=True))
    status = page.get_by_text("Status", exact=True).locator("..")
    ended = status.get_by_text(re.compile(r"^(Succeeded|Failed|Canceled|Completed)"))
    expect(ended.first).to_be_visible(timeout=BACKFILL_DEADLINE_MS)
    quiet(page, recorder)


def visit_automations(page: Page, recorder: Recorder) -> None:
    """The Automation list, then the first schedule's page and the first sensor's."""
    schedules = page.locator("a[href*='/schedules/']")
    sensors = page.locator("a[href*='/sensors/']")
    visit(page, recorder, "/automation", schedules.first)
    for kind, links in (("schedule", schedules), ("sensor", sensors)):
        href = str(links.first.get_attribute("href"))
        recorder.enter(f"{kind} {href.rsplit('/', 1)[-1]}")
        links.first.click()
        page.wait_for_url(f"**{href}")
        settle(page, recorder, page.get_by_text("Running", exact=True).first)
        page.go_back()
        settle(page, recorder, schedules.first)


def browse(page: Page, recorder: Recorder) -> None:
    """Where an operator goes, in order."""
    timeline = page.get_by_text("jobs_pipeline", exact=True).first
    visit(page, recorder, "/", timeline, timeout=FIRST_PAGE_DEADLINE_MS)
    visit(page, recorder, "/overview", timeline)
    visit(page, recorder, "/runs", run_or_none_link(page))
    for job, path in listed_jobs(page, recorder).items():
        visit_job(page, recorder, job, path)
    launch_dry_run(page, recorder)
    visit(page, recorder, "/assets", page.locator(f"a[href='/assets/{ASSET}']").first)
    visit_asset(page, recorder)
    backfill_id = launch_backfill(page, recorder)
    preview_backfill_of_all_partitions(page, recorder)
    watch_backfill(page, recorder, backfill_id)
    visit_automations(page, recorder)
    visit(page, recorder, "/deployment/daemons", page.get_by_text("Scheduler", exact=True))
    visit(page, recorder, "/deployment/locations", page.locator("a[href^='/locations/']").first)
    visit(page, recorder, "/runs", run_or_none_link(page))


def set_nux_seen(url: str) -> None:
    """What the UI's "Skip" on its newsletter dialog records: no dialog over the pages."""
    answer = httpx.post(f"{url}/graphql", json={"query": "mutation { setNuxSeen }"}, timeout=30)
    answer.raise_for_status()
    if "errors" in answer.json():
        raise SystemExit(f"setNuxSeen failed: {answer.text}")


def measure(browser: Browser, url: str) -> Recorder:
    set_nux_seen(url)
    context = browser.new_context(viewport=VIEWPORT, base_url=url)
    context.set_default_timeout(UI_DEADLINE_MS)
    expect.set_options(timeout=UI_DEADLINE_MS)  # its own default is 5 s
    recorder = Recorder()
    try:
        page = context.new_page()
        recorder.watch(page)
        browse(page, recorder)
    finally:
        context.close()
    return recorder


def operations_table(recorder: Recorder) -> pd.DataFrame:
    """One row per operation; `largest_in` is the step that sent its largest body."""
    requests = pd.DataFrame([asdict(request) for request in recorder.requests])
    largest = requests.loc[requests.groupby("operation")["body_bytes"].idxmax()]
    table = requests.groupby("operation").agg(
        count=("body_bytes", "size"),
        max_body_bytes=("body_bytes", "max"),
        max_tokens=("tokens", "max"),
        max_variables_bytes=("variables_bytes", "max"),
        methods=("method", lambda methods: ",".join(sorted(set(methods)))),
    )
    table["largest_in"] = largest.set_index("operation")["step"]
    return table.sort_values("max_body_bytes", ascending=False)


def frames_table(recorder: Recorder) -> pd.DataFrame:
    frames = pd.DataFrame([asdict(frame) for frame in recorder.frames])
    if frames.empty:
        return frames
    table = frames.groupby("kind").agg(
        count=("frame_bytes", "size"),
        max_frame_bytes=("frame_bytes", "max"),
        max_tokens=("tokens", "max"),
    )
    return table.sort_values("max_frame_bytes", ascending=False)


def maxima(recorder: Recorder) -> dict[str, Any]:
    by_body = max(recorder.requests, key=lambda request: request.body_bytes)
    by_tokens = max(recorder.requests, key=lambda request: request.tokens)
    return {
        "max_body_bytes": by_body.body_bytes,
        "max_body_operation": by_body.operation,
        "max_tokens": by_tokens.tokens,
        "max_tokens_operation": by_tokens.operation,
        "max_variables_bytes": max(request.variables_bytes for request in recorder.requests),
        "max_websocket_frame_bytes": max((f.frame_bytes for f in recorder.frames), default=0),
        "requests": len(recorder.requests),
    }


def report(recorder: Recorder) -> None:
    with pd.option_context("display.max_rows", None, "display.width", 250):
        print("GraphQL requests to /graphql, per operation:")
        print(operations_table(recorder).to_string())
        print()
        print("Websocket frames sent, per kind:")
        print(frames_table(recorder).to_string())
    print(json.dumps(maxima(recorder)))


@contextlib.contextmanager
def webserver(url: str | None) -> Iterator[str]:
    """`url`, or a `jobs-pipeline dev` of its own, with its state in a temporary folder."""
    if url is not None:
        yield url.rstrip("/")
        return
    with (
        tempfile.TemporaryDirectory(prefix="ui-graphql-") as folder,
        running_dev(Path(folder) / "s") as dev,
    ):
        try:
            yield dev.url("")
        except BaseException:
            print(f"--- dev log ---\n{tail(dev.log)}", file=sys.stderr)
            raise


def exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM ends the bench as Ctrl-C does: through its `finally`s, `dev` stopped."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running UI (default: start `jobs-pipeline dev`)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    started = time.monotonic()
    with webserver(args.url) as url, chromium() as browser:
        recorder = measure(browser, url)
    print(f"ui_graphql_requests: {time.monotonic() - started:.0f} s", file=sys.stderr)
    report(recorder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
