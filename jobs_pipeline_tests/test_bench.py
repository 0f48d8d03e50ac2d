"""The benchmark keeps working: a small run whose three methods must agree.

It asserts what was computed, never how fast: speed is the benchmark's business.
"""

import json
import subprocess
import sys


def test_the_rollup_benchmark_runs_and_its_three_methods_agree(tmp_path, project_root):
    output = tmp_path / "rollup.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.rollup", "--users", "150", "300", "--json", str(output)],
        cwd=project_root,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(output.read_text())
    assert [f["users"] for f in figures] == [150, 300]
    assert [f["shots"] for f in figures] == [150 * 30, 300 * 30]
    assert all(f["seed_users_timed"] == f["users"] for f in figures)
    # Dagster's bookkeeping is the same whatever the number of users.
    assert figures[0]["dagster_events"] == figures[1]["dagster_events"] > 0
    header = run.stdout.splitlines()[0]
    for column in ("(a) seed s", "(b) dagster s", "(c) floor s", "b/c", "a/b", "(b) peak MB"):
        assert column in header


def test_the_benchmark_refuses_nonsense_sizes(project_root):
    run = subprocess.run(
        [sys.executable, "-m", "bench.rollup", "--users", "0"],
        cwd=project_root,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "positive" in run.stderr
