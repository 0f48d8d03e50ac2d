"""Alerts to operators: email, a Slack-compatible webhook, and always the log.

Each alert is delivered once per channel. What was delivered is recorded where the
alert's subject lives: on the failed (or slow) run as a run tag, or in the sensor's
cursor for a job's failure rate. A channel that is down is tried again at the next
sensor evaluation while the others keep what they already got. A crash between
sending and recording can repeat that one message (at-least-once): a missed alert
costs more than a repeated one.
"""

import json
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage

import dagster as dg
from pydantic import Field

from jobs_pipeline.formats import display_name, first_line, iso_utc
from jobs_pipeline.redaction import redact
from jobs_pipeline.resources.mail import Mailer
from jobs_pipeline.tags import alerted_tag


@dataclass(frozen=True)
class Alert:
    """One thing operators must hear about."""

    kind: str  # "failed", "still running", "failure rate"
    job_name: str
    headline: str  # the error's first line, or what is wrong
    at: datetime
    link: str
    run_id: str | None = None

    @property
    def subject(self) -> str:
        """The whole run id, so the run can be found (`why`, `undo`, the UI) from the subject."""
        run = f" (run {self.run_id})" if self.run_id else ""
        return f"[jobs-pipeline] {display_name(self.job_name)} {self.kind}{run}"

    @property
    def text(self) -> str:
        lines = [f"{display_name(self.job_name)} {self.kind}: {self.headline}"]
        if self.run_id:
            lines.append(f"Run {self.run_id} at {iso_utc(self.at)}")
        else:
            lines.append(f"At {iso_utc(self.at)}")
        lines.append(self.link)
        return redact("\n".join(lines))

    def payload(self) -> dict[str, str | None]:
        """Slack-compatible (`text`), with the fields a program would want beside it."""
        return {
            "text": self.text,
            "job": self.job_name,
            "kind": self.kind,
            "run_id": self.run_id,
            "at": iso_utc(self.at),
            "link": self.link,
        }


# Where links in alerts and the CLI point when `DAGSTER_WEBSERVER_URL` is unset: `make
# dev`'s UI on its default port (`jobs-pipeline dev --port` sets the variable to its own).
DEFAULT_WEBSERVER_URL = "http://127.0.0.1:3000"


def webserver_url() -> str:
    return os.environ.get("DAGSTER_WEBSERVER_URL") or DEFAULT_WEBSERVER_URL


class AlertChannels(dg.ConfigurableResource):
    """Where alerts go: `ALERT_EMAIL_TO` by mail, `ALERT_WEBHOOK_URL` as JSON; links
    point at `DAGSTER_WEBSERVER_URL`.
    """

    mailer: Mailer
    email_to: str | None = Field(default=None, description="Comma-separated recipients.")
    webhook_url: str | None = Field(default=None, description="POSTed {'text': ...} JSON.")
    webserver_url: str = Field(default=DEFAULT_WEBSERVER_URL)
    timeout_seconds: float = Field(default=10, gt=0)

    def configured(self) -> list[str]:
        channels = []
        if self.recipients():
            channels.append("email")
        if self.webhook_url:
            channels.append("webhook")
        return channels

    def recipients(self) -> list[str]:
        return [r.strip() for r in (self.email_to or "").split(",") if r.strip()]

    def run_link(self, run_id: str) -> str:
        return f"{self.webserver_url.rstrip('/')}/runs/{run_id}"

    def job_link(self, job_name: str) -> str:
        return f"{self.webserver_url.rstrip('/')}/jobs/{job_name}"

    def send(self, channel: str, alert: Alert) -> None:
        if channel == "email":
            self.send_email(alert)
        elif channel == "webhook":
            self.post_webhook(alert)
        else:
            raise ValueError(f"unknown alert channel {channel!r}")

    def send_email(self, alert: Alert) -> None:
        message = EmailMessage()
        message["To"] = ", ".join(self.recipients())
        message["Subject"] = alert.subject
        message.set_content(alert.text + "\n")
        self.mailer.send(message)

    def post_webhook(self, alert: Alert) -> None:
        if not self.webhook_url:
            raise ValueError("no webhook to post to: ALERT_WEBHOOK_URL is not set")
        request = urllib.request.Request(  # noqa: S310 - the operator's own URL
            self.webhook_url,
            data=json.dumps(alert.payload()).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:  # noqa: S310
            if not 200 <= response.status < 300:
                raise RuntimeError(f"the webhook answered {response.status}")


def deliver(
    alert: Alert,
    channels: AlertChannels,
    log: Callable[[str], None],
    *,
    delivered: set[str],
    record: Callable[[str], None],
) -> list[str]:
    """Sends `alert` on each channel not in `delivered`, recording each success.

    The log is a channel too: written once, on the first delivery attempt. Returns
    the channels that failed (tried again at the next evaluation).
    """
    failed = []
    if "log" not in delivered:
        log(alert.text)
        record("log")
    for channel in channels.configured():
        if channel in delivered:
            continue
        try:
            channels.send(channel, alert)
        except Exception as error:
            failed.append(channel)
            reason = redact(first_line(error, with_type=True))
            log(f"Alert via {channel} failed, to be retried: {reason}")
            continue
        record(channel)
    return failed


# -- alerts about a run, recorded on the run -------------------------------------------------


def delivered_on_run(run: dg.DagsterRun, kind: str) -> set[str]:
    prefix = alerted_tag(kind, "")
    return {key.removeprefix(prefix) for key in run.tags if key.startswith(prefix)}


def deliver_for_run(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    alert: Alert,
    channels: AlertChannels,
    log: Callable[[str], None],
) -> list[str]:
    """Reads the run's tags afresh first: another sensor may have alerted it since `run` was
    read (the failure sensor and the redelivery sensor's catch-up both alert failed runs).
    """

    def record(channel: str) -> None:
        instance.add_run_tags(run.run_id, {alerted_tag(alert.kind, channel): iso_utc(alert.at)})

    current = instance.get_run_by_id(run.run_id) or run
    delivered = delivered_on_run(current, alert.kind)
    return deliver(alert, channels, log, delivered=delivered, record=record)


def pending_channels(run: dg.DagsterRun, kind: str, channels: AlertChannels) -> list[str]:
    """Channels a run's alert has not reached yet; empty when none was ever opened."""
    done = delivered_on_run(run, kind)
    if "log" not in done:
        return []
    return [channel for channel in channels.configured() if channel not in done]
