"""The embedded default: a private PostgreSQL from the pgserver wheel.

With `DATABASE_URL` or `DAGSTER_POSTGRES_URL` unset, the project runs on a
PostgreSQL server of its own under a project-local, git-ignored folder
(`.jobs-pipeline/`, or `$JOBS_PIPELINE_STATE_DIR`). It listens only on a unix
socket inside that folder, so nothing is exposed on the network.
"""

import contextlib
import os
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The Dagster instance's configuration a deployment (and `dev`) copies into DAGSTER_HOME:
# kept out of the root, where `dagster dev` would read it without DAGSTER_HOME.
INSTANCE_CONFIG = PROJECT_ROOT / "deploy" / "dagster.yaml"
STATE_DIR_VARIABLE = "JOBS_PIPELINE_STATE_DIR"
APP_DATABASE = "app"
DAGSTER_DATABASE = "dagster"


def state_dir() -> Path:
    """The project-local folder holding the embedded database, Dagster's home and outgoing mail."""
    configured = os.environ.get(STATE_DIR_VARIABLE)
    if configured:
        return Path(configured).resolve()
    root = PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").exists() else Path.cwd()
    return root / ".jobs-pipeline"


@dataclass
class EmbeddedPostgres:
    """A running pgserver; it stops when the last process using it exits."""

    pgdata: Path
    server: Any

    @property
    def socket_dir(self) -> Path:
        """Where the server's unix socket is: the data folder, or, when that folder's path
        is too long for a socket (107 bytes), a short runtime folder pgserver picks.
        """
        return Path(self.server.get_postmaster_info().socket_dir)

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://postgres@/{database}?host={self.socket_dir}"

    def ensure_database(self, name: str) -> None:
        with psycopg.connect(
            host=str(self.socket_dir), user="postgres", dbname="postgres", autocommit=True
        ) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if exists is None:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def start_embedded_postgres(
    pgdata: Path | None = None, *, cleanup_mode: str | None = "stop"
) -> EmbeddedPostgres:
    folder = pgdata or state_dir() / "pgdata"
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (any server, CI); pgserver copes.
        warnings.simplefilter("ignore")
        import pgserver  # a heavy import, needed only on the embedded path

        already_running = (folder / POSTMASTER_PID).exists()
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            server = pgserver.get_server(folder, cleanup_mode=cleanup_mode)
        except (OSError, subprocess.SubprocessError, AssertionError) as failure:
            raise EmbeddedServerError(folder, failure) from None
        except KeyboardInterrupt:
            # Stopped while the server was starting: pgserver's exit handler stops only a
            # server it saw start, so the one this call was starting is stopped here.
            if not already_running:
                stop_server_on(folder, starting_s=5)
            raise
    return EmbeddedPostgres(pgdata=folder, server=server)


@contextlib.contextmanager
def throwaway_embedded_postgres(prefix: str) -> Iterator[EmbeddedPostgres]:
    """A private server in a temporary folder, stopped before that folder is deleted.

    pgserver stops its servers when the process exits, by which time a temporary folder
    is gone and `pg_ctl stop` fails with it: the server would go on running, without
    its data, after the process that started it (seen after every benchmark run).
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        pgdata = Path(folder) / "pg"
        try:
            yield start_embedded_postgres(pgdata, cleanup_mode=None)
        finally:
            stop_server_on(pgdata)


POSTMASTER_PID = "postmaster.pid"


def stop_server_on(pgdata: Path, *, starting_s: float = 0, deadline_s: float = 30) -> None:
    """Asks the server running on `pgdata`, if any, for a fast shutdown, and waits until
    it has stopped. `starting_s`: how long to wait for the pid file of a server that may
    still be starting (it writes the file early in its start).
    """
    pid_file = pgdata / POSTMASTER_PID
    appear_by = time.monotonic() + starting_s
    while not pid_file.exists() and time.monotonic() < appear_by:
        time.sleep(0.1)
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    give_up = time.monotonic() + deadline_s
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown
        while time.monotonic() < give_up:
            os.kill(pid, 0)  # ProcessLookupError once it is gone
            time.sleep(0.1)


class EmbeddedServerError(RuntimeError):
    """The embedded server did not start: said in one line, with what to do instead."""

    def __init__(self, folder: Path, failure: BaseException):
        reason = (str(failure).strip().splitlines() or [type(failure).__name__])[0]
        super().__init__(
            f"the embedded PostgreSQL in {folder} did not start ({reason}); its log is"
            f" {folder / 'log'}. Set {STATE_DIR_VARIABLE} to another folder, or"
            " DATABASE_URL and DAGSTER_POSTGRES_URL to servers of your own."
        )


@dataclass
class Environment:
    """Where this process's databases are; `embedded` is set when the project runs its own."""

    embedded: EmbeddedPostgres | None
    app_is_embedded: bool


def fill_environment(*, dagster_storage: bool) -> Environment:
    """Points `DATABASE_URL` (and `DAGSTER_POSTGRES_URL` when asked) at the embedded
    server when they are unset; a URL the operator set is always used as it is.
    """
    wants_app = not os.environ.get("DATABASE_URL")
    wants_dagster = dagster_storage and not os.environ.get("DAGSTER_POSTGRES_URL")
    if not (wants_app or wants_dagster):
        return Environment(embedded=None, app_is_embedded=False)
    embedded = start_embedded_postgres()
    if wants_app:
        embedded.ensure_database(APP_DATABASE)
        os.environ["DATABASE_URL"] = embedded.url(APP_DATABASE)
    if wants_dagster:
        embedded.ensure_database(DAGSTER_DATABASE)
        os.environ["DAGSTER_POSTGRES_URL"] = embedded.url(DAGSTER_DATABASE, "postgresql+psycopg2")
    return Environment(embedded=embedded, app_is_embedded=wants_app)
