"""A dead man's switch: each successful scheduled run pings an outside service.

`HEARTBEAT_URL` is a URL template (`{job}` becomes the job's name, e.g.
`https://hc-ping.com/<project key>/{job}`), as healthchecks.io, Cronitor and Sentry Crons
take it: the service expects a ping per schedule, and alerts when one does not come,
which is what happens when the daemon (and so every schedule and alert here) is down.
The URL is a secret (whoever holds it can ping in our name): it is never logged.
"""

import urllib.request

import dagster as dg
from pydantic import Field

from jobs_pipeline.formats import display_name

JOB_PLACEHOLDER = "{job}"


class Heartbeats(dg.ConfigurableResource):
    """Where successful scheduled runs are reported (`HEARTBEAT_URL`); unset, nowhere."""

    url: str | None = Field(default=None, description="A URL template; `{job}` is the job.")
    timeout_seconds: float = Field(default=10, gt=0)

    @property
    def configured(self) -> bool:
        return bool(self.url)

    def ping(self, job_name: str) -> None:
        """A GET of the job's URL; raises on anything but a 2xx answer."""
        if not self.url:
            raise ValueError("no heartbeat to ping: HEARTBEAT_URL is not set")
        url = self.url.replace(JOB_PLACEHOLDER, display_name(job_name))
        with urllib.request.urlopen(url, timeout=self.timeout_seconds) as answer:  # noqa: S310 - the operator's own URL
            if not 200 <= answer.status < 300:
                raise RuntimeError(f"the heartbeat service answered {answer.status}")
