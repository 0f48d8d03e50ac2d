"""The production topology started for a test: Dagster's own processes, each on its own.

`running_deployment` does what docs/deploying.md tells an operator to do,
with the same commands: `jobs-pipeline setup` (DAGSTER_HOME's files, the schema, the
pools), the code location served over gRPC by `dagster code-server start`, then, once it
answers, `dagster-webserver` and `dagster-daemon run` on the workspace file, on one PostgreSQL
storage, every secret an environment variable. Each process runs in a session (and so a
process group) of its own, logging to a file, so a test can kill one of them (the daemon)
without touching the others, and so everything can be stopped on the way out, whatever
happened: the code server's run workers live in its process group, so its whole group
gets SIGKILL after a short grace.

More processes (the admin HTTP API, say) are one `Deployment.start(name, argv)` away.
"""

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs_pipeline.dagster_private import code_server_load_error
from jobs_pipeline.deployment.run_launchers import DEFAULT_RUNS_IN
from jobs_pipeline_tests.support.deadlines import deadline
from jobs_pipeline_tests.support.processes import (
    JOBS_PIPELINE,
    answers_200,
    cli_environment,
    descendants,
    free_port,
    kill_groups,
    process_groups,
    tail,
)

REPOSITORY = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DAGSTER = BIN / "dagster"
DAGSTER_WEBSERVER = BIN / "dagster-webserver"
DAGSTER_DAEMON = BIN / "dagster-daemon"

LOCATION_NAME = "jobs_pipeline"
REPOSITORY_NAME = "__repository__"  # what Dagster names the repository of a `Definitions`
CODE_MODULE = "jobs_pipeline.definitions"
HOST = "127.0.0.1"

# Deadlines for waiting, never assertions about speed.
STARTUP_DEADLINE_S = 120
COMMAND_DEADLINE_S = 60
STOP_GRACE_S = 20
# The code server stops on SIGTERM in seconds; its run workers, in its group, are SIGKILLed
# after a short grace (what a service manager does at the end of its stop timeout).
CODE_SERVER_GRACE_S = 3
REAP_DEADLINE_S = 10


def code_server_argv(port: int) -> list[str]:
    return [str(DAGSTER), "code-server", "start", "-h", HOST, "-p", str(port), "-m", CODE_MODULE]


def webserver_argv(workspace: Path, port: int) -> list[str]:
    return [str(DAGSTER_WEBSERVER), "-w", str(workspace), "-h", HOST, "-p", str(port)]


def daemon_argv(workspace: Path) -> list[str]:
    return [str(DAGSTER_DAEMON), "run", "-w", str(workspace)]


@dataclass
class Process:
    """One started process; `groups` are the process groups seen under it so far."""

    name: str
    argv: list[str]
    environment: dict[str, str]
    popen: subprocess.Popen
    log: Path
    grace_s: float
    groups: set[int] = field(default_factory=set)

    def note_descendants(self) -> None:
        """Records the groups of everything below it while the tree is intact: once the
        process is gone, what it left behind (run workers) has no parent to be found by.
        """
        self.groups.add(self.popen.pid)
        if self.popen.poll() is None:
            self.groups |= process_groups(descendants(self.popen.pid))

    @property
    def running(self) -> bool:
        return self.popen.poll() is None


class Deployment:
    """The started processes, by name, with what a test needs to reach and disturb them."""

    def __init__(
        self, folder: Path, environment: Mapping[str, str], app_variables: Mapping[str, str]
    ):
        self.folder = folder
        self.home = folder / "dagster_home"
        self.logs = folder / "logs"
        # What Dagster's own processes need; the code server also gets the app's settings.
        self.dagster_environment = dict(environment)
        self.code_environment = {**environment, **app_variables}
        self.app_db_url = app_variables["DATABASE_URL"]
        self.code_server_port = free_port()
        self.webserver_port = free_port()
        self.workspace = self.home / "workspace.yaml"
        self.processes: dict[str, Process] = {}

    # -- processes ---------------------------------------------------------------------------

    def start(
        self,
        name: str,
        argv: Sequence[str],
        environment: Mapping[str, str] | None = None,
        grace_s: float = STOP_GRACE_S,
    ) -> Process:
        """Starts `argv` as `name` in a session of its own, its output appended to
        logs/<name>.log (a restart keeps the earlier output). The environment defaults
        to the code server's (Dagster's variables plus the app's).
        """
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        env = dict(self.code_environment if environment is None else environment)
        with log.open("ab") as output:
            popen = subprocess.Popen(
                list(argv),
                env=env,
                cwd=self.folder,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = Process(name, list(argv), env, popen, log, grace_s, {popen.pid})
        self.processes[name] = process
        return process

    def kill(self, name: str) -> None:
        """SIGKILL to the process and everything in its group: a crash, an OOM kill."""
        process = self.processes[name]
        process.note_descendants()
        kill_groups(process.groups, signal.SIGKILL)
        process.popen.wait(timeout=REAP_DEADLINE_S)

    def restart(self, name: str) -> Process:
        """The same command again, as a service manager restarts a dead service."""
        old = self.processes[name]
        if old.running:
            self.stop(name)
        return self.start(name, old.argv, old.environment, old.grace_s)

    def stop(self, name: str) -> None:
        """SIGTERM to its group, then SIGKILL to every group seen under it after the grace."""
        process = self.processes[name]
        process.note_descendants()
        if process.running:
            kill_groups({process.popen.pid}, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=process.grace_s)
        kill_groups(process.groups, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(timeout=REAP_DEADLINE_S)

    def stop_all(self) -> None:
        """Every process, the last started first (the code server, which launches the run
        workers, after the daemon and webserver that ask it to); then, again, every group
        ever seen under any of them.
        """
        for process in self.processes.values():
            process.note_descendants()
        for name in reversed(list(self.processes)):
            with contextlib.suppress(Exception):
                self.stop(name)
        for process in self.processes.values():
            kill_groups(process.groups, signal.SIGKILL)

    @contextmanager
    def paused(self, name: str) -> Iterator[None]:
        """The process's group stopped (SIGSTOP) for the block and continued after it: a
        process that is there but does nothing, as a hung or overloaded one would.
        """
        process = self.processes[name]
        kill_groups({process.popen.pid}, signal.SIGSTOP)
        try:
            yield
        finally:
            kill_groups({process.popen.pid}, signal.SIGCONT)

    def kill_daemon(self) -> None:
        self.kill("daemon")

    def restart_daemon(self) -> float:
        """Starts the daemon again; returns when it was started (for `wait_for_daemon`)."""
        started = time.time()
        self.restart("daemon")
        return started

    # -- reaching it -------------------------------------------------------------------------

    @property
    def webserver_url(self) -> str:
        return f"http://{HOST}:{self.webserver_port}"

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        """The webserver's GraphQL API, as the UI calls it; a GraphQL error fails the test."""
        request = urllib.request.Request(
            f"{self.webserver_url}/graphql",
            data=json.dumps({"query": query, "variables": variables}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.load(response)
        assert "errors" not in answer, f"{answer['errors']}\n{self.process_logs()}"
        return answer["data"]

    def log_text(self, name: str) -> str:
        """Everything `name` has logged, across restarts."""
        return self.processes[name].log.read_text(encoding="utf-8", errors="replace")

    def process_logs(self, lines: int = 40) -> str:
        """The tail of every process's log, for an assertion's message."""
        return "\n".join(
            f"--- {name} ({'running' if p.running else f'exited {p.popen.returncode}'}) ---\n"
            f"{tail(p.log, lines)}"
            for name, p in self.processes.items()
        )

    # -- waiting -----------------------------------------------------------------------------

    def wait_until(self, what: str, ready: Any, deadline_s: float = STARTUP_DEADLINE_S) -> None:
        """Polls `ready()` until it is true; fails with the logs at the deadline, or as soon
        as a started process has exited.
        """
        give_up = time.monotonic() + deadline(deadline_s)
        while time.monotonic() < give_up:
            if ready():
                return
            exited = [name for name, p in self.processes.items() if not p.running]
            if exited:
                raise AssertionError(f"{exited} exited before {what}:\n{self.process_logs()}")
            time.sleep(0.5)
        raise AssertionError(f"not {what} within {deadline_s:.0f} s:\n{self.process_logs()}")

    def code_server_healthy(self) -> bool:
        """The code server answers, its code loaded: asked over gRPC from this process
        (a `dagster api grpc-health-check` process a poll would import Dagster each time).
        """
        try:
            return code_server_load_error(HOST, self.code_server_port) is None
        except Exception:  # not answering yet
            return False

    def location_loaded(self, since: float = 0.0) -> bool:
        """The webserver holds the code location, loaded after `since` (epoch seconds):
        after a code server restarts, the webserver keeps its old view until it notices
        the new server and loads the code again, and a launch before that finds no job.
        """
        if not answers_200(f"{self.webserver_url}/server_info"):
            return False
        entries = self.graphql(WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"]
        return any(
            entry["name"] == LOCATION_NAME
            and entry["locationOrLoadError"]["__typename"] == "RepositoryLocation"
            and entry["updatedTimestamp"] > since
            for entry in entries
        )

    def daemon_heartbeats_since(self, since: float) -> bool:
        """Every daemon Dagster requires has sent a heartbeat after `since` (epoch seconds).

        Dagster counts a daemon healthy for 30 minutes after its last heartbeat, so a
        killed daemon still looks healthy: only a fresh heartbeat shows the new one runs.
        """
        statuses = self.graphql(DAEMONS_QUERY)["instance"]["daemonHealth"]["allDaemonStatuses"]
        required = [s for s in statuses if s["required"]]
        return bool(required) and all((s["lastHeartbeatTime"] or 0) > since for s in required)

    def wait_for_daemon(self, since: float) -> None:
        self.wait_until(
            "every daemon sent a heartbeat", lambda: self.daemon_heartbeats_since(since)
        )


WORKSPACE_QUERY = """
{ workspaceOrError { ... on Workspace {
    locationEntries { name updatedTimestamp locationOrLoadError { __typename } }
} } }
"""

DAEMONS_QUERY = """
{ instance { daemonHealth { allDaemonStatuses {
    daemonType required healthy lastHeartbeatTime
} } } }
"""


def set_up(deployment: Deployment, runs_in: str = DEFAULT_RUNS_IN) -> None:
    """`jobs-pipeline setup`, as docs/deploying.md runs it first: DAGSTER_HOME's
    dagster.yaml and workspace file, the app's tables checked, the project's schema, and
    every pool's limit before any run (runs racing to create one crashed one, notes).
    """
    done = subprocess.run(
        [
            *(str(JOBS_PIPELINE), "setup", "--runs-in", runs_in),
            *("--code-server", f"{HOST}:{deployment.code_server_port}"),
        ],
        # From the project's checkout, as an operator runs it (not the code server's release).
        env={**deployment.dagster_environment, "DATABASE_URL": deployment.app_db_url},
        cwd=deployment.folder,
        capture_output=True,
        text=True,
        timeout=COMMAND_DEADLINE_S,
    )
    assert done.returncode == 0, f"{done.args}:\n{done.stdout}\n{done.stderr}"


def start_dagster(deployment: Deployment) -> None:
    """The code server, then, once it answers, the webserver and the daemon."""
    code = deployment.start(
        "code-server", code_server_argv(deployment.code_server_port), grace_s=CODE_SERVER_GRACE_S
    )
    deployment.wait_until("the code server answered", deployment.code_server_healthy)
    code.note_descendants()
    started = time.time()
    deployment.start(
        "webserver",
        webserver_argv(deployment.workspace, deployment.webserver_port),
        deployment.dagster_environment,
    )
    deployment.start("daemon", daemon_argv(deployment.workspace), deployment.dagster_environment)
    deployment.wait_until("the webserver loaded the code location", deployment.location_loaded)
    deployment.wait_for_daemon(started)


@contextmanager
def running_deployment(
    folder: Path,
    app_db_url: str,
    dagster_db_url: str,
    code_server_env: Mapping[str, str] | None = None,
    runs_in: str = DEFAULT_RUNS_IN,
    **env: str,
) -> Iterator[Deployment]:
    """Dagster deployed as docs/deploying.md says, in `folder`; stopped, all of it, on the way out.

    `dagster_db_url` is Dagster's storage (`postgresql+psycopg2://`, an existing, empty
    database); `app_db_url` the app's database, which only the code server (and the run
    workers it starts) is given, with `code_server_env`; `env` goes to every process.
    `runs_in` is `jobs-pipeline setup --runs-in`: where the daemon sends runs.
    """
    environment = cli_environment(
        folder / "state",
        DAGSTER_HOME=str(folder / "dagster_home"),
        DAGSTER_POSTGRES_URL=dagster_db_url,
        **env,
    )
    code_variables = {"DATABASE_URL": app_db_url, **(code_server_env or {})}
    deployment = Deployment(folder, environment, code_variables)
    folder.mkdir(parents=True, exist_ok=True)
    set_up(deployment, runs_in)
    try:
        start_dagster(deployment)
        yield deployment
    finally:
        deployment.stop_all()
