"""Benchmark of discipline-stats-rollup: the seed's loop, this project, and the floor.

    .venv/bin/python -m bench.rollup --users 10000 100000
    .venv/bin/python -m bench.rollup --users 1000 --seed-sample 500   # a quick look

For each size, on one fresh database in one process run: (a) the original design's
per-user loop (over `--seed-sample` users when given, its rate then applied to all),
(b) this project's rollup through Dagster, all shards in one run (its own process,
for its peak memory), and (c) one hand-written INSERT ... SELECT ... ON CONFLICT
statement, the floor for this database. (b) and (c) run twice, alternating, best
kept. Prints a table and writes the same figures as JSON.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import Engine, text

from bench.generate import generate
from bench.seed_baseline import seed_rollup
from jobs_pipeline.app_database_setup import create_app_schema
from jobs_pipeline.database import create_app_engine
from jobs_pipeline.embedded import EmbeddedPostgres, start_embedded_postgres

FLOOR_SQL = (Path(__file__).parent / "floor.sql").read_text()


@dataclass
class Figures:
    users: int
    shots: int
    seed_seconds: float
    seed_users_timed: int
    dagster_seconds: float
    floor_seconds: float
    dagster_peak_rss_mb: float
    dagster_events: int

    @property
    def ratio_dagster_to_floor(self) -> float:
        return self.dagster_seconds / self.floor_seconds

    @property
    def ratio_seed_to_dagster(self) -> float:
        return self.seed_seconds / self.dagster_seconds


def time_floor(engine: Engine) -> float:
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        connection.execute(text("SET LOCAL work_mem = '256MB'"))
        started = time.perf_counter()
        connection.exec_driver_sql(FLOOR_SQL.replace("%", "%%"))
        return time.perf_counter() - started


def stats_fingerprint(engine: Engine) -> str:
    """A digest of every statistics row but its time, to prove (a), (b) and (c) agree."""
    with engine.connect() as connection:
        return str(
            connection.execute(
                text(
                    "SELECT md5(string_agg(row(user_id, total_shots, stop_loss_honored_count,"
                    " stop_loss_ignored_count, profit_target_honored_count,"
                    " profit_target_ignored_count, abort_trigger_honored_count,"
                    " abort_trigger_ignored_count)::text, ',' ORDER BY user_id))"
                    " FROM user_discipline_stats"
                )
            ).scalar_one()
        )


def time_dagster(url: str) -> dict[str, float]:
    out = subprocess.run(  # noqa: S603 (our own interpreter and module)
        [sys.executable, "-m", "bench.dagster_rollup", url],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def check_agreement(engine: Engine, expected: str, who: str) -> None:
    if stats_fingerprint(engine) != expected:
        raise SystemExit(f"{who} computed statistics that differ from the floor statement's")


def measure(postgres: EmbeddedPostgres, users: int, seed_sample: int | None) -> Figures:
    database = f"bench_{users}"
    postgres.ensure_database(database)
    url = postgres.url(database)
    engine = create_app_engine(url, statement_timeout_ms=3_600_000)
    try:
        create_app_schema(engine)
        print(f"[{users} users] generating...", file=sys.stderr)
        generate(engine, users)
        with engine.connect() as connection:
            shots = int(connection.execute(text("SELECT count(*) FROM shots")).scalar_one())
        time_floor(engine)  # warm the caches once, untimed
        expected = stats_fingerprint(engine)
        dagster_runs, floor_runs = [], []
        for _ in range(2):
            dagster_runs.append(time_dagster(url))
            check_agreement(engine, expected, "(b) this project's rollup")
            floor_runs.append(time_floor(engine))
        best = min(dagster_runs, key=lambda run: run["seconds"])
        print(f"[{users} users] seed loop...", file=sys.stderr)
        with engine.begin() as connection:
            connection.execute(text("TRUNCATE user_discipline_stats"))
        started = time.perf_counter()
        timed = seed_rollup(engine, limit=seed_sample)
        seed_seconds = (time.perf_counter() - started) * users / timed
        if timed == users:
            check_agreement(engine, expected, "(a) the seed's loop")
        return Figures(
            users=users,
            shots=shots,
            seed_seconds=seed_seconds,
            seed_users_timed=timed,
            dagster_seconds=best["seconds"],
            floor_seconds=min(floor_runs),
            dagster_peak_rss_mb=max(run["peak_rss_mb"] for run in dagster_runs),
            dagster_events=int(best["events"]),
        )
    finally:
        engine.dispose()


def table(results: list[Figures]) -> str:
    header = (
        f"{'users':>9} {'shots':>10} {'(a) seed s':>11} {'(b) dagster s':>14} {'(c) floor s':>12}"
        f" {'(b) users/s':>12} {'b/c':>6} {'a/b':>7} {'(b) peak MB':>12} {'(b) events':>11}"
    )
    lines = [header]
    for r in results:
        note = "" if r.seed_users_timed == r.users else f"  (a) from {r.seed_users_timed} users"
        lines.append(
            f"{r.users:>9} {r.shots:>10} {r.seed_seconds:>11.2f} {r.dagster_seconds:>14.2f}"
            f" {r.floor_seconds:>12.2f} {r.users / r.dagster_seconds:>12.0f}"
            f" {r.ratio_dagster_to_floor:>6.2f} {r.ratio_seed_to_dagster:>7.1f}"
            f" {r.dagster_peak_rss_mb:>12.0f} {r.dagster_events:>11}{note}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument(
        "--seed-sample", type=int, help="time the seed's loop on this many users only"
    )
    parser.add_argument("--json", type=Path, default=Path("bench/results/rollup.json"))
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.users) or (args.seed_sample is not None and args.seed_sample < 1):
        parser.error("--users and --seed-sample take positive numbers")

    with tempfile.TemporaryDirectory(prefix="jpbench") as folder:
        postgres = start_embedded_postgres(Path(folder) / "pg", cleanup_mode="delete")
        results = [measure(postgres, n, args.seed_sample) for n in args.users]
    print(table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            [
                {
                    **asdict(r),
                    "ratio_dagster_to_floor": r.ratio_dagster_to_floor,
                    "ratio_seed_to_dagster": r.ratio_seed_to_dagster,
                }
                for r in results
            ],
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
