"""`dev`: the embedded database, demo data, Dagster's UI and daemon, stopped together."""

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path

from jobs_pipeline.storage.embedded import (
    INSTANCE_CONFIG,
    PROJECT_ROOT,
    fill_environment,
)


def prepare_dagster_home() -> Path:
    """`$DAGSTER_HOME`, or a project-local one holding the project's deploy/dagster.yaml."""
    from jobs_pipeline.interfaces.launching.dev_instance import dev_home

    configured = os.environ.get("DAGSTER_HOME")
    if configured:
        return Path(configured)
    home = dev_home()
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(INSTANCE_CONFIG, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def command_dev(host: str, port: int) -> int:
    from jobs_pipeline.interfaces.launching.dev_instance import (
        record_served_database,
        record_served_webserver,
    )
    from jobs_pipeline.interfaces.launching.instance import open_instance
    from jobs_pipeline.storage.app_database_setup import prepare_embedded_app_database
    from jobs_pipeline.storage.schema_migrations import upgrade

    environment = fill_environment(dagster_storage=True)
    app_url = os.environ["DATABASE_URL"]
    if environment.app_is_embedded:
        made = prepare_embedded_app_database(app_url, demo_data_when_empty=True)
        if made:
            print(f"jobs-pipeline: demo data: {made} users", file=sys.stderr)
    # The project's own schema, in the embedded database or the one DATABASE_URL names.
    upgrade(app_url)
    home = prepare_dagster_home()
    # `run`, `undo` and `list` find this instance when they use the same app database.
    record_served_database(home, app_url)
    with open_instance():
        pass  # creates the storage's tables and the pools' limits before the daemon runs
    # Links in alerts, in the Launchpad and in `run`'s output name this UI's own port.
    os.environ.setdefault("DAGSTER_WEBSERVER_URL", f"http://{host}:{port}")
    record_served_webserver(home, os.environ["DAGSTER_WEBSERVER_URL"])
    command = dagster_dev_command(host, port)
    print(
        f"jobs-pipeline: Dagster UI on http://{host}:{port} (DAGSTER_HOME={home})\n"
        f"jobs-pipeline: app database {printable_url(app_url)}\n"
        f"jobs-pipeline:   psql {shlex.quote(libpq_url(app_url))}\n"
        "jobs-pipeline: stop with Ctrl-C (or SIGTERM): the UI, the daemon and the"
        " embedded database stop with it",
        file=sys.stderr,
    )
    return supervise(command, cwd=PROJECT_ROOT if in_checkout() else Path.cwd())


def in_checkout() -> bool:
    """The project's checkout, where `dg` finds the project (pyproject.toml's [tool.dg])."""
    return (PROJECT_ROOT / "pyproject.toml").exists()


def dagster_dev_command(host: str, port: int) -> list[str]:
    """`dg dev` in the checkout, as Dagster now has it (`dagster dev` warns that it is
    superseded); elsewhere, `dagster dev` on the definitions module.
    """
    bin_dir = Path(sys.executable).parent
    if in_checkout():
        return [str(bin_dir / "dg"), "dev", "-h", host, "-p", str(port)]
    target = ["-m", "jobs_pipeline.definitions"]
    return [str(bin_dir / "dagster"), "dev", *target, "-h", host, "-p", str(port)]


def printable_url(url: str) -> str:
    """A database URL with its password, if any, replaced by ***."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def libpq_url(url: str) -> str:
    """What `psql` takes: the URL without SQLAlchemy's driver or the password."""
    from sqlalchemy.engine import URL, make_url

    parsed = make_url(url)
    bare = URL.create(
        "postgresql", parsed.username, None, parsed.host, parsed.port, parsed.database, parsed.query
    )
    return urllib.parse.unquote(bare.render_as_string())


def supervise(command: list[str], cwd: Path) -> int:
    """Runs `dagster dev` in its own process group and stops all of it on SIGINT/SIGTERM.

    The child gets default signal handlers: one started from a non-interactive
    shell would otherwise inherit SIGINT ignored, and Dagster then ignores SIGTERM too.
    """

    def reset_signals() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    child = subprocess.Popen(command, cwd=cwd, start_new_session=True, preexec_fn=reset_signals)  # noqa: S603

    def stop(_signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        return child.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
