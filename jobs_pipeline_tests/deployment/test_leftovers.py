"""The end-of-session guard fails a run that leaves a process or a server behind."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jobs_pipeline_tests.support.deadlines import deadline
from jobs_pipeline_tests.support.leftovers import GRACE_VARIABLE
from jobs_pipeline_tests.support.processes import alive

pytestmark = pytest.mark.slow

LEAVES_BEHIND = """
import socket
import subprocess

kept = []

def test_starts_a_process_and_a_server_and_forgets_them():
    kept.append(subprocess.Popen(["sleep", "600"], start_new_session=True))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    kept.append(server)
"""

TIDY = """
import subprocess

def test_starts_a_process_and_stops_it():
    process = subprocess.Popen(["sleep", "600"])
    process.terminate()
    process.wait()
"""


PYTEST_WITH_THE_GUARD_ONLY = [
    *(sys.executable, "-m", "pytest", "-q"),
    *("-p", "jobs_pipeline_tests.support.leftovers", "-p", "no:cacheprovider"),
]


def session(folder: Path, test_source: str) -> subprocess.CompletedProcess[str]:
    """A pytest session of its own, with the guard and nothing else of this suite's."""
    (folder / "test_inner.py").write_text(textwrap.dedent(test_source))
    return subprocess.run(
        [*PYTEST_WITH_THE_GUARD_ONLY, "test_inner.py"],
        cwd=folder,
        env={
            **os.environ,
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
            GRACE_VARIABLE: "1",
        },
        capture_output=True,
        text=True,
        timeout=deadline(900),
        check=False,
    )


def test_a_process_or_server_left_running_fails_the_session_naming_it(tmp_path):
    outcome = session(tmp_path, LEAVES_BEHIND)

    said = outcome.stdout + outcome.stderr
    assert outcome.returncode == 1, said
    assert "1 passed" in said, said
    assert "outlived it" in said, said
    (sleep_line,) = [line for line in said.splitlines() if "sleep 600" in line]
    assert "a server in the test process on port" in said, said
    # Named, then stopped: a failing run leaves nothing behind either.
    leftover_pid = int(sleep_line.split("pid ", 1)[1].split(":", 1)[0])
    assert not alive(leftover_pid)


def test_a_session_that_stops_what_it_starts_passes(tmp_path):
    outcome = session(tmp_path, TIDY)

    assert outcome.returncode == 0, outcome.stdout + outcome.stderr
    assert "outlived" not in outcome.stdout
