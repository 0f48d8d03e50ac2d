"""The suite leaves nothing running: a guard at the end of every pytest session.

Every process the session starts, directly or not, inherits a variable naming the
session, and keeps it whatever becomes of its parent: a PostgreSQL server that
`pg_ctl` detached, a daemon's run worker, a process a killed test left behind. Once
the session's fixtures are all torn down, any process still carrying it, or a server
still listening inside the test process itself (SMTP, webhook, an in-thread API), fails
the run, named with its command line. They are stopped afterwards, so a failing run
does not leave them behind either.
"""

import contextlib
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

SESSION_VARIABLE = "JOBS_PIPELINE_TEST_SESSION"
# Processes in the middle of their shutdown when the last fixture returned get this long.
GRACE_VARIABLE = "JOBS_PIPELINE_TEST_LEFTOVER_GRACE_SECONDS"
LISTEN = "0A"


@dataclass(frozen=True)
class Leftover:
    pid: int
    command: str

    def describe(self) -> str:
        return f"pid {self.pid}: {self.command}"


def pytest_configure(config: pytest.Config) -> None:
    """Names this session in the environment every process it starts inherits. A worker
    of a parallel run (pytest-xdist) keeps the name its controller gave it: the controller
    is the one that looks for leftovers, once every worker is done.
    """
    if getattr(config, "workerinput", None) is None or SESSION_VARIABLE not in os.environ:
        os.environ[SESSION_VARIABLE] = uuid.uuid4().hex


def carries(pid: int, variable: str, value: str) -> bool:
    """The process's environment holds `variable=value` (another user's, unreadable: no)."""
    try:
        environment = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{variable}={value}".encode() in environment.split(b"\0")


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() or "?"


def is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def processes_with(variable: str, value: str) -> list[Leftover]:
    """Every live process, but this one, whose environment holds `variable=value`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        if carries(pid, variable, value) and not is_zombie(pid):
            found.append(Leftover(pid, command_line(pid)))
    return found


def own_socket_inodes() -> set[str]:
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def listening_here() -> list[Leftover]:
    """TCP servers still listening in this very process (the in-thread test servers)."""
    inodes = own_socket_inodes()
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == LISTEN and fields[9] in inodes:
                    port = int(fields[1].rsplit(":", 1)[1], 16)
                    found.append(
                        Leftover(os.getpid(), f"a server in the test process on port {port}")
                    )
    return found


def grace_seconds() -> float:
    return float(os.environ.get(GRACE_VARIABLE, "15"))


def still_running(marker: str) -> list[Leftover]:
    """What is left once the grace period is over (or nothing, as soon as nothing is)."""
    give_up = time.monotonic() + grace_seconds()
    while (
        left := processes_with(SESSION_VARIABLE, marker) + listening_here()
    ) and time.monotonic() < give_up:
        time.sleep(0.5)
    return left


def stop(leftovers: list[Leftover]) -> None:
    """SIGKILL (a PostgreSQL server: SIGQUIT first, which takes its workers down too)."""
    for leftover in leftovers:
        if leftover.pid == os.getpid():
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(
                leftover.pid, signal.SIGQUIT if "postgres" in leftover.command else signal.SIGKILL
            )
    time.sleep(1)
    for leftover in leftovers:
        if leftover.pid != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(leftover.pid, signal.SIGKILL)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    marker = os.environ.get(SESSION_VARIABLE)
    if marker is None or getattr(session.config, "workerinput", None) is not None:
        return
    leftovers = still_running(marker)
    if not leftovers:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [
        f"{len(leftovers)} process(es) or server(s) the suite started outlived it"
        f" (after {grace_seconds():g} s); every test must stop what it starts:",
        *(f"  {leftover.describe()}" for leftover in leftovers),
    ]
    if reporter is not None:
        reporter.write_sep("=", "left running", red=True)
        for line in lines:
            reporter.write_line(line, red=True)
    else:
        print("\n".join(lines))
    stop(leftovers)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
