"""Processes a test starts can be stopped with SIGTERM, even in a suite started in the
background (which ignores SIGINT) after a Dagster run executed in the test's process.
"""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jobs_pipeline_tests.support.deadlines import deadline

pytestmark = pytest.mark.slow

A_RUN_THEN_A_PROCESS = """
import signal
import subprocess
from pathlib import Path

import dagster as dg


@dg.op
def nothing():
    return None


@dg.job
def one_step():
    nothing()


def test_a_run_executes_in_this_process():
    assert one_step.execute_in_process().success


def test_a_process_started_afterwards_does_not_ignore_sigterm():
    process = subprocess.Popen(["sleep", "600"])
    try:
        status = Path(f"/proc/{process.pid}/status").read_text()
        (ignored,) = [line.split()[1] for line in status.splitlines() if line.startswith("SigIgn")]
        assert not int(ignored, 16) & (1 << (signal.SIGTERM - 1)), "SIGTERM is ignored"
    finally:
        process.kill()
        process.wait()
"""


def in_the_background(folder: Path, *plugins: str) -> subprocess.CompletedProcess[str]:
    """A pytest session of its own, started as a background job of a script is: SIGINT ignored."""
    (folder / "test_inner.py").write_text(textwrap.dedent(A_RUN_THEN_A_PROCESS))
    loaded = [argument for plugin in plugins for argument in ("-p", plugin)]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *loaded, "test_inner.py"],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        capture_output=True,
        text=True,
        timeout=deadline(300),
        check=False,
    )


def test_without_the_suites_plugin_a_process_would_ignore_sigterm(tmp_path):
    outcome = in_the_background(tmp_path)

    said = outcome.stdout + outcome.stderr
    assert "1 failed, 1 passed" in said, said
    assert "SIGTERM is ignored" in said, said


def test_with_it_every_process_a_test_starts_stops_on_sigterm(tmp_path):
    outcome = in_the_background(tmp_path, "jobs_pipeline_tests.support.signals")

    said = outcome.stdout + outcome.stderr
    assert outcome.returncode == 0, said
    assert "2 passed" in said, said
