"""Running the installed `jobs-pipeline` console script for real, and waiting on servers."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from sqlalchemy import Engine, text

from jobs_pipeline_tests.support.deadlines import deadline

JOBS_PIPELINE = Path(sys.executable).with_name("jobs-pipeline")

# Variables a test must set itself: the developer's own (or another test's) must not leak in.
OWNED_VARIABLES = ("DATABASE_URL", "DAGSTER_HOME", "DAGSTER_POSTGRES_URL")


def cli_environment(state_dir: Path, **variables: str) -> dict[str, str]:
    """This process's environment without the project's variables, plus `variables`."""
    environment = {k: v for k, v in os.environ.items() if k not in OWNED_VARIABLES}
    environment["JOBS_PIPELINE_STATE_DIR"] = str(state_dir)
    environment.update(variables)
    return environment


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed `jobs-pipeline` command, run to its end, its output captured."""
    return subprocess.run(
        [str(JOBS_PIPELINE), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=deadline(300),
        check=False,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def tail(path: Path, lines: int = 60) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def wait_for_url(url: str, process: subprocess.Popen, log: Path, deadline_s: float) -> None:
    """Waits until `url` answers 200; fails early, with the log, if the process exits."""
    give_up = time.monotonic() + deadline(deadline_s)
    while time.monotonic() < give_up:
        if answers_200(url):
            return
        if process.poll() is not None:
            raise AssertionError(
                f"the process exited ({process.returncode}) before {url} answered:\n{tail(log)}"
            )
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer 200 within {deadline_s:.0f} s:\n{tail(log)}")


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (in parentheses) may hold spaces; the parent pid follows it.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def process_groups(pids: list[int]) -> set[int]:
    groups = set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(pid))
    return groups


def kill_groups(groups: set[int], signum: int) -> None:
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signum)


# A job run in a process of its own, through Dagster's Python API (past the queue), so a
# test can kill it midway. It prints the job's result as its last line.
JOB_PROCESS = """
import json, sys
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.definitions import defs
from jobs_pipeline.interfaces.launching.plans import op_config_for, plan_launch
from jobs_pipeline.job_parts.results import result_of
job = defs.resolve_job_def(sys.argv[2])
run = job.execute_in_process(
    resources={"db": AppDatabase(url=sys.argv[1])},
    run_config=op_config_for(job, **json.loads(sys.argv[3])),
    tags=plan_launch(job).tags,
)
print(json.dumps(result_of(run.all_events)))
"""


def start_job_process(app_db_url: str, job_name: str, **op_config: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", JOB_PROCESS, app_db_url, job_name, json.dumps(op_config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def kill(process: subprocess.Popen, engine: Engine) -> None:
    """SIGKILL, then a wait for the process's database sessions to end too.

    A session outlives its killed client until it next touches the socket: one in the
    middle of a statement (a slow trigger) finishes it first, holding its row locks, and a
    run started meanwhile would skip those rows as the app's.
    """
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    busy = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND state = 'active'"
    )
    give_up = time.monotonic() + deadline(60)
    while time.monotonic() < give_up:
        with engine.connect() as connection:
            if connection.execute(busy).scalar_one() == 0:
                return
        time.sleep(0.1)
    raise AssertionError("the killed process's database sessions did not end")


def stop_process(process: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM, then SIGKILL once the grace is over: a stop on the way out, whatever the
    process does with SIGTERM (Dagster's code server ignores it for a while).
    """
    process.terminate()
    try:
        process.wait(timeout=deadline(grace_s))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
