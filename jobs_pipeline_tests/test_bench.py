"""The benchmarks keep working: small runs whose methods must agree.

They assert what was computed and written, never how fast: speed is the benchmark's
business. The one WAL assertion is about the rows written, not the clock: a
steady-state run where nothing changed writes less than a first run into an empty table.
"""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def run_bench(project_root, *args):
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=project_root,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_rollup_benchmark_runs_and_its_methods_agree(tmp_path, project_root):
    output = tmp_path / "rollup.json"
    run = run_bench(
        project_root,
        "bench.rollup",
        *("--users", "150", "300", "--rounds", "1", "--json", str(output)),
    )

    assert run.returncode == 0, run.stderr[-2000:]
    sizes = json.loads(output.read_text())
    assert [s["users"] for s in sizes] == [150, 300]
    assert [s["shots"] for s in sizes] == [150 * 30, 300 * 30]
    assert all(s["loop_users_timed"] == s["users"] for s in sizes)
    assert all(s["generate_seconds"] > 0 for s in sizes)
    for section in ("Data", "Time", "WAL"):
        assert section in run.stdout.splitlines()
    for column in ("generate s", "first s", "steady s", "first /c", "peak MB", "first WAL MB"):
        assert column in run.stdout
    for size in sizes:
        names = [v["name"] for v in size["variants"]]
        assert names[0] == "(c) floor"
        assert any(name.startswith("(b) rollup") for name in names)
        for variant in size["variants"]:
            assert variant["first"]["wal_bytes"] > 0
            assert variant["steady"]["wal_bytes"] >= 0
        floor = size["variants"][0]
        assert floor["steady"]["wal_bytes"] < floor["first"]["wal_bytes"]
    # Dagster's bookkeeping is the same whatever the number of users.
    events = [[v["events"] for v in s["variants"][1:]] for s in sizes]
    assert events[0] == events[1] and all(e > 0 for e in events[0])

    # Where nothing changed, the rollup writes no row and next to no WAL.
    rollups = [v for s in sizes for v in s["variants"][1:]]
    for variant in rollups:
        assert variant["steady"]["result"]["usersUpdated"] == 0
        assert variant["steady"]["wal_bytes"] < variant["first"]["wal_bytes"]


def test_the_tier_expiration_benchmark_runs_and_both_ways_agree(tmp_path, project_root):
    output = tmp_path / "tier_expiration.json"
    run = run_bench(
        project_root,
        "bench.tier_expiration",
        *("--users", "400", "--expired", "60", "--rounds", "1", "--json", str(output)),
    )

    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(output.read_text())
    # The bench itself fails unless both downgraded the same users and wrote the same
    # ledger and outbox rows; here, that they were the expired ones, one of each per user.
    assert (figures["downgraded"], figures["ledger_rows"], figures["outbox_rows"]) == (60, 60, 60)
    assert figures["dagster_events"] > 0 and figures["dagster_peak_rss_mb"] > 0
    assert figures["dagster_seconds"] > 0 and figures["statement_seconds"] > 0
    for column in ("(b) dagster s", "(c) statement s", "b/c", "(b) peak MB", "(b) events"):
        assert column in run.stdout


def test_the_door_benchmark_times_the_sign_in_page_while_huge_requests_are_read(project_root):
    run = run_bench(project_root, "bench.door_responsiveness", "--samples", "5")

    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["heavy_posts_during_measure"] > 0
    assert figures["idle_p50_ms"] > 0 and figures["loaded_p50_ms"] > 0
    assert "4 heavy posters" in run.stdout


@pytest.mark.parametrize(
    ("module", "args", "complaint"),
    [
        ("bench.rollup", ["--users", "0"], "positive"),
        ("bench.rollup", ["--users", "10", "--rounds", "0"], "positive"),
        ("bench.tier_expiration", ["--users", "10", "--expired", "20"], "more than"),
        ("bench.door_responsiveness", ["--samples", "0"], "2 or more"),
    ],
)
def test_the_benchmarks_refuse_nonsense_sizes(project_root, module, args, complaint):
    run = run_bench(project_root, module, *args)
    assert run.returncode == 2
    assert complaint in run.stderr
