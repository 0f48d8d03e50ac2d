"""How names, times and errors are written for people: in logs, alerts, the CLI and the API.

The bottom of the package: it imports nothing of the project's, so every layer may use it.
"""

from datetime import datetime


def display_name(job_name: str) -> str:
    """The hyphenated name users see in the CLI and logs: `tier_expiration` -> `tier-expiration`."""
    return job_name.replace("_", "-")


def iso_utc(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


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
