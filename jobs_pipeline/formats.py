"""How names, times and errors are written for people: in logs, alerts, the CLI and the API.

The bottom of the package: it imports nothing of the project's, so every layer may use it.
"""

import math
from datetime import UTC, datetime


def display_name(job_name: str) -> str:
    """The hyphenated name users see in the CLI and logs: `tier_expiration` -> `tier-expiration`."""
    return job_name.replace("_", "-")


def iso_utc(moment: datetime) -> str:
    """For machines and alerts: `2026-12-07T04:33:55.123456Z`."""
    return moment.isoformat().replace("+00:00", "Z")


def utc_second(moment: datetime) -> str:
    """For a line of history: `2026-12-07T04:33:55Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_minute(moment: datetime | float | None) -> str:
    """For a table: `2026-12-07 04:33 UTC` (a datetime, or seconds since the epoch); `-`
    for none.
    """
    if moment is None:
        return "-"
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def elapsed(seconds: float) -> str:
    """A span of time as people say it: `45 s`, `12 min`, `3.5 h`; `never seen` for one
    that has no start.
    """
    if math.isinf(seconds):
        return "never seen"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds // 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def first_line(error: BaseException, *, with_type: bool = False) -> str:
    """An error's first line, without the SQL and parameters SQLAlchemy appends (it keeps
    the driver's error as `orig`). `with_type` names the error's type before it, for an
    alert, where "timed out" alone does not say what timed out.
    """
    text = str(getattr(error, "orig", None) or error).strip()
    if not text:
        return type(error).__name__
    line = text.splitlines()[0]
    return f"{type(error).__name__}: {line}" if with_type else line
