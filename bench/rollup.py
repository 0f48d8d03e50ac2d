"""Benchmark of discipline-stats-rollup: a per-user loop, this project, and the floor.

    .venv/bin/python -m bench.rollup --users 100000 1000000 --loop-sample 2000   # the figures
    .venv/bin/python -m bench.rollup --users 1000 --loop-sample 500 --rounds 1   # a quick look

(On a quiet machine: the 1M size needs several GB in the temporary folder and takes
tens of minutes, most of it generating the data and the 2 rounds of each variant.)

For each size, on one fresh database in one process run, it times (c) one
hand-written INSERT ... SELECT ... ON CONFLICT statement, the floor for this database
(it skips rows whose counts did not change); (b) this project's rollup through
Dagster, all shards in one run, in a process of its own (for its peak memory and
events), at its default degree and at `parallel_groups: 1`, so the gain of the
parallel path is visible; and (a) a per-user loop (over
`--loop-sample` users when given, its rate then applied to all).

Each of (b) and (c) runs twice per round: a FIRST run into an empty
user_discipline_stats (TRUNCATE before), and a STEADY-STATE run where nothing changed
(the table already holds exactly the current statistics). For each, the time and the
WAL it wrote (see bench/measuring.py: a CHECKPOINT comes first, and the table is
vacuumed before the steady-state run, so neither figure depends on what happened to
be pending). After every run, a fingerprint of the rows proves it computed what the
floor did. `--rounds` rounds, the variants' order reversed every other round; the
best time and the largest WAL of each are kept. Prints the tables and writes JSON.
"""

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from bench.generate import generate
from bench.measuring import (
    checkpoint,
    render_table,
    run_in_own_process,
    wal_bytes_since,
    wal_position,
)
from bench.per_user_loop import per_user_rollup
from jobs_pipeline.jobs.discipline_stats_rollup import RollupConfig
from jobs_pipeline.storage.app_database_setup import create_app_schema
from jobs_pipeline.storage.embedded import EmbeddedPostgres, throwaway_embedded_postgres
from jobs_pipeline.storage.engine import create_app_engine

FLOOR_SQL = (Path(__file__).parent / "floor.sql").read_text()
FLOOR = "(c) floor"
PHASES = ("first", "steady")


@dataclass
class Run:
    """One run of one variant: how long it took and the WAL it wrote."""

    seconds: float
    wal_bytes: int
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class Variant:
    """(c), or (b) at one degree: its best figures over the rounds."""

    name: str
    op_config: dict[str, Any] | None  # None: the floor statement, not a Dagster run
    runs: dict[str, list[Run]] = field(default_factory=lambda: {p: [] for p in PHASES})
    peak_rss_mb: float | None = None
    events: int | None = None

    def seconds(self, phase: str) -> float:
        return min(run.seconds for run in self.runs[phase])

    def wal_bytes(self, phase: str) -> int:
        return max(run.wal_bytes for run in self.runs[phase])


@dataclass
class SizeFigures:
    users: int
    shots: int
    generate_seconds: float
    loop_seconds: float
    loop_users_timed: int
    variants: list[Variant]

    def floor(self) -> Variant:
        return next(v for v in self.variants if v.op_config is None)

    def default_rollup(self) -> Variant:
        return next(v for v in self.variants if v.op_config == {})


def rollup_variants() -> list[Variant]:
    """The floor, the rollup at its default degree, and at one group (when that differs)."""
    default = RollupConfig.model_fields["parallel_groups"].default
    variants = [Variant(FLOOR, None), Variant(f"(b) rollup, default ({default})", {})]
    if default != 1:
        variants.append(Variant("(b) rollup, 1 group", {"parallel_groups": 1}))
    return variants


def run_floor(engine: Engine) -> Run:
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        connection.execute(text("SET LOCAL work_mem = '256MB'"))
        started = time.perf_counter()
        connection.exec_driver_sql(FLOOR_SQL.replace("%", "%%"))
    return Run(seconds=time.perf_counter() - started, wal_bytes=0)


def run_dagster(url: str, variant: Variant) -> Run:
    out = run_in_own_process("bench.dagster_rollup", url, json.dumps(variant.op_config or {}))
    variant.peak_rss_mb = max(variant.peak_rss_mb or 0.0, float(out["peak_rss_mb"]))
    variant.events = int(out["events"])
    return Run(seconds=float(out["seconds"]), wal_bytes=0, result=dict(out.get("result", {})))


def measured(engine: Engine, url: str, variant: Variant) -> Run:
    """One run of `variant` after a CHECKPOINT, with the WAL it wrote."""
    checkpoint(engine)
    position = wal_position(engine)
    run = run_floor(engine) if variant.op_config is None else run_dagster(url, variant)
    run.wal_bytes = wal_bytes_since(engine, position)
    return run


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


def check_agreement(engine: Engine, expected: str, who: str) -> None:
    if stats_fingerprint(engine) != expected:
        raise SystemExit(f"{who} computed statistics that differ from the floor statement's")


def truncate_stats(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE user_discipline_stats"))


def vacuum_stats(engine: Engine) -> None:
    """Sets the new rows' hint bits and visibility outside the measured window: otherwise
    the steady-state run would pay (in WAL) for the first run's leftovers.
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("SET statement_timeout = 0"))
        connection.execute(text("VACUUM (ANALYZE) user_discipline_stats"))


def no_background_vacuum(engine: Engine) -> None:
    """Autovacuum off on the bench's private server, and the generated tables vacuumed
    now, outside every measured window: a background vacuum of the freshly generated
    journals landing inside a window (it did, on a busy machine) would be counted as the
    run's WAL. A production database's rows were vacuumed long before a nightly run.
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("ALTER SYSTEM SET autovacuum = off"))
        connection.execute(text("SELECT pg_reload_conf()"))
        connection.execute(text("SET statement_timeout = 0"))
        connection.execute(text("VACUUM (ANALYZE)"))


def round_of(engine: Engine, url: str, variants: list[Variant], expected: str) -> None:
    for variant in variants:
        truncate_stats(engine)
        variant.runs["first"].append(measured(engine, url, variant))
        check_agreement(engine, expected, f"{variant.name}, first run")
        vacuum_stats(engine)
        variant.runs["steady"].append(measured(engine, url, variant))
        check_agreement(engine, expected, f"{variant.name}, steady-state run")


def measure(
    postgres: EmbeddedPostgres, users: int, loop_sample: int | None, rounds: int
) -> SizeFigures:
    database = f"bench_{users}"
    postgres.ensure_database(database)
    url = postgres.url(database)
    engine = create_app_engine(url, statement_timeout_ms=3_600_000)
    try:
        create_app_schema(engine)
        print(f"[{users} users] generating...", file=sys.stderr)
        started = time.perf_counter()
        generate(engine, users)
        generate_seconds = time.perf_counter() - started
        print(f"[{users} users] generated in {generate_seconds:.1f} s", file=sys.stderr)
        no_background_vacuum(engine)
        with engine.connect() as connection:
            shots = int(connection.execute(text("SELECT count(*) FROM shots")).scalar_one())
        run_floor(engine)  # warm the caches once, untimed
        expected = stats_fingerprint(engine)
        variants = rollup_variants()
        for number in range(rounds):
            print(f"[{users} users] round {number + 1} of {rounds}...", file=sys.stderr)
            round_of(engine, url, variants if number % 2 == 0 else variants[::-1], expected)
        print(f"[{users} users] per-user loop...", file=sys.stderr)
        truncate_stats(engine)
        started = time.perf_counter()
        timed = per_user_rollup(engine, limit=loop_sample)
        loop_seconds = (time.perf_counter() - started) * users / timed
        if timed == users:
            check_agreement(engine, expected, "(a) the per-user loop")
        return SizeFigures(
            users=users,
            shots=shots,
            generate_seconds=generate_seconds,
            loop_seconds=loop_seconds,
            loop_users_timed=timed,
            variants=variants,
        )
    finally:
        engine.dispose()


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def time_rows(results: list[SizeFigures]) -> list[dict[str, Any]]:
    """One row per size and variant: times, against the floor's, memory and events."""
    rows: list[dict[str, Any]] = []
    for size in results:
        floor = size.floor()
        for v in size.variants:
            rows.append(
                {
                    "users": size.users,
                    "variant": v.name,
                    "first s": v.seconds("first"),
                    "steady s": v.seconds("steady"),
                    "first /c": ratio(v.seconds("first"), floor.seconds("first")),
                    "steady /c": ratio(v.seconds("steady"), floor.seconds("steady")),
                    "peak MB": v.peak_rss_mb,
                    "events": v.events,
                }
            )
        note = "" if size.loop_users_timed == size.users else f" ({size.loop_users_timed} timed)"
        rows.append(
            {
                "users": size.users,
                "variant": f"(a) per-user loop{note}",
                "first s": size.loop_seconds,
                "first /c": ratio(size.loop_seconds, floor.seconds("first")),
            }
        )
    return rows


def wal_rows(results: list[SizeFigures]) -> list[dict[str, Any]]:
    """One row per size and variant: the WAL of a first and of a steady-state run."""
    return [
        {
            "users": size.users,
            "variant": v.name,
            "first WAL MB": v.wal_bytes("first") / 1e6,
            "steady WAL MB": v.wal_bytes("steady") / 1e6,
            "steady/first %": 100 * (ratio(v.wal_bytes("steady"), v.wal_bytes("first")) or 0),
        }
        for size in results
        for v in size.variants
    ]


def size_rows(results: list[SizeFigures]) -> list[dict[str, Any]]:
    return [
        {
            "users": size.users,
            "shots": size.shots,
            "generate s": size.generate_seconds,
            "a/b": ratio(size.loop_seconds, size.default_rollup().seconds("first")),
        }
        for size in results
    ]


def report(results: list[SizeFigures]) -> str:
    """The tables: data, time (ratios to the floor's same phase), WAL."""
    time_formats = {"first s": ".2f", "steady s": ".2f", "first /c": ".2f", "steady /c": ".2f"}
    parts = [
        "Data\n" + render_table(size_rows(results), {"generate s": ".1f", "a/b": ".1f"}),
        "Time\n"
        + render_table(time_rows(results), {**time_formats, "peak MB": ".0f", "events": ".0f"}),
        "WAL\n"
        + render_table(
            wal_rows(results),
            {"first WAL MB": ".2f", "steady WAL MB": ".3f", "steady/first %": ".1f"},
        ),
    ]
    return "\n\n".join(parts)


def as_json(results: list[SizeFigures]) -> list[dict[str, Any]]:
    out = []
    for size in results:
        floor = size.floor()
        variants = []
        for v in size.variants:
            figures: dict[str, Any] = {
                "name": v.name,
                "op_config": v.op_config,
                "peak_rss_mb": v.peak_rss_mb,
                "events": v.events,
            }
            for phase in PHASES:
                figures[phase] = {
                    "seconds": v.seconds(phase),
                    "wal_bytes": v.wal_bytes(phase),
                    "ratio_to_floor": ratio(v.seconds(phase), floor.seconds(phase)),
                    "result": v.runs[phase][-1].result,
                    "rounds": [asdict(run) for run in v.runs[phase]],
                }
            variants.append(figures)
        out.append(
            {
                "users": size.users,
                "shots": size.shots,
                "generate_seconds": size.generate_seconds,
                "loop_seconds": size.loop_seconds,
                "loop_users_timed": size.loop_users_timed,
                "ratio_seed_to_dagster": ratio(
                    size.loop_seconds, size.default_rollup().seconds("first")
                ),
                "variants": variants,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument(
        "--loop-sample", type=int, help="time the per-user loop on this many users only"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of every variant; the best is kept"
    )
    parser.add_argument("--json", type=Path, default=Path("bench/results/rollup.json"))
    args = parser.parse_args(argv)
    numbers = [*args.users, args.rounds, args.loop_sample or 1]
    if any(n < 1 for n in numbers):
        parser.error("--users, --rounds and --loop-sample take positive numbers")

    with throwaway_embedded_postgres(prefix="jpbench") as postgres:
        results = [measure(postgres, n, args.loop_sample, args.rounds) for n in args.users]
    print(report(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(as_json(results), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
