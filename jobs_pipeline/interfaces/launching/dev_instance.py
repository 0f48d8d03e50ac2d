"""The instance `jobs-pipeline dev` serves: where it lives, which app database it serves
(written when dev starts), and the CLI adopting it for a run against that same database,
so the run shows in dev's UI.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url

from jobs_pipeline.storage.embedded import state_dir


def dev_home() -> Path:
    """`jobs-pipeline dev`'s instance folder, in the state folder."""
    return state_dir() / "dagster_home"


SERVED_DATABASE_FILE = "app_database"


def database_identity(url: str) -> str:
    """The app database a URL names, without its password: where dev's instance says
    which database it serves.
    """
    parsed = make_url(url)
    host = parsed.host or parsed.query.get("host") or ""
    return f"{parsed.username or ''}@{host}:{parsed.port or ''}/{parsed.database or ''}"


def record_served_database(home: Path, app_url: str) -> None:
    (home / SERVED_DATABASE_FILE).write_text(database_identity(app_url) + "\n")


SERVED_WEBSERVER_FILE = "webserver_url"


def record_served_webserver(home: Path, url: str) -> None:
    (home / SERVED_WEBSERVER_FILE).write_text(url + "\n")


def adopt_dev_instance(app_url: str) -> Path | None:
    """With `DAGSTER_HOME` unset, the dev instance of this state folder, when there is one
    and it serves the same app database: it becomes `DAGSTER_HOME` for this process, so
    runs started here show in dev's UI and `list` shows them.
    """
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    home = dev_home()
    served = home / SERVED_DATABASE_FILE
    if not (home / "dagster.yaml").exists() or not served.exists():
        return None
    if served.read_text().strip() != database_identity(app_url):
        return None
    os.environ["DAGSTER_HOME"] = str(home)
    webserver = home / SERVED_WEBSERVER_FILE
    if webserver.exists():  # its links name dev's UI, on whatever port dev serves it
        os.environ.setdefault("DAGSTER_WEBSERVER_URL", webserver.read_text().strip())
    return home
