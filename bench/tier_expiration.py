"""Benchmark of tier-expiration: this project's run against one hand-written statement.

    .venv/bin/python -m bench.tier_expiration --users 1000000 --expired 100000
    .venv/bin/python -m bench.tier_expiration --users 100000 --expired 10000 \\
        --json bench/results/tier_expiration_100k.json

Generates `--users` users set-based, `--expired` of them on an expired paid tier (and
as many paying and current, which must be left alone), in a template database with
the project's schema. Then, each in a fresh copy of that template (CREATE DATABASE ...
TEMPLATE), it times (b) the project's tier_expiration through Dagster, in a process of
its own (`allow_large: true`; batches of 5,000 users, one transaction each, as
deployed), and (c) ONE hand-written statement doing the same work: the UPDATE of the
expired users with, as data-modifying CTEs, their change-ledger rows (before/after
JSON, the reason) and their `tier-expired` outbox rows (with their dedupe keys). (c)
is the floor: what the database needs to do the job's writes, with no batches, no
Dagster and no round trips.

Both must agree: the same users downgraded, the same ledger rows (but for the run's
id and time) and the same outbox rows. `--rounds` rounds (fresh copies each, the
order alternating), best time kept. Prints a table and writes JSON.
"""

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine, text

from bench.generate import generate_tier_users
from bench.measuring import render_table, run_in_own_process
from jobs_pipeline.jobs.tier_expiration import JOB_NAME
from jobs_pipeline.storage.app_database_setup import create_app_schema
from jobs_pipeline.storage.embedded import EmbeddedPostgres, throwaway_embedded_postgres
from jobs_pipeline.storage.engine import create_app_engine
from jobs_pipeline.storage.schema_migrations import upgrade

TEMPLATE = "tier_template"
HAND_WRITTEN_RUN_ID = "bench-hand-written"

# (c): what `downgrade` in jobs_pipeline/jobs/tier_expiration.py writes batch by batch,
# as one statement over every expired user: rows locked (skipping any the app holds),
# the rule checked again on the locked row, one ledger row and one outbox row each.
HAND_WRITTEN = """
WITH locked AS (
    SELECT id, tier, tier_source, tier_expires_at, updated_at
    FROM users
    WHERE tier_expires_at IS NOT NULL AND tier_expires_at < %(now)s AND tier <> 'free'
    FOR UPDATE SKIP LOCKED
), downgraded AS (
    UPDATE users AS u
    SET tier = 'free', tier_source = 'default', tier_expires_at = NULL, updated_at = %(now)s
    FROM locked
    WHERE u.id = locked.id
      AND u.tier_expires_at IS NOT NULL AND u.tier_expires_at < %(now)s AND u.tier <> 'free'
    RETURNING u.id, u.email, locked.tier, locked.tier_source, locked.tier_expires_at,
              locked.updated_at
), queued AS (
    INSERT INTO jobs_pipeline.email_outbox (recipient, user_id, template, dedupe_key, payload)
    SELECT d.email, d.id, 'tier-expired', concat('tier-expired:', d.id, ':', e.expired_at),
           jsonb_build_object('previous_tier', d.tier, 'expired_at', e.expired_at)
    FROM downgraded AS d,
         LATERAL (SELECT to_char(timezone('UTC', d.tier_expires_at),
                                 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS expired_at) AS e
    ON CONFLICT (dedupe_key) DO NOTHING
), recorded AS (
    INSERT INTO jobs_pipeline.change_ledger
        (run_id, job, table_name, row_key, before, after, reason)
    SELECT %(run_id)s, %(job)s, 'users', d.id::text,
           jsonb_build_object('tier', d.tier, 'tier_source', d.tier_source,
                              'tier_expires_at', d.tier_expires_at,
                              'updated_at', d.updated_at),
           jsonb_build_object('tier', 'free', 'tier_source', 'default',
                              'tier_expires_at', NULL,
                              'updated_at', CAST(%(now)s AS timestamptz)),
           concat('tier_expires_at ',
                  to_char(timezone('UTC', d.tier_expires_at), 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                  ' < run time ',
                  to_char(timezone('UTC', CAST(%(now)s AS timestamptz)),
                          'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
    FROM downgraded AS d
)
SELECT count(*) FROM downgraded
"""

# What both must have written alike; the run's id and time differ by design, so the
# ledger's `after` is compared without `updated_at` and its reason without the run time.
DIGESTS = {
    "users": (
        "SELECT count(*) FILTER (WHERE tier = 'free'), md5(string_agg(row(id, tier,"
        " tier_source, tier_expires_at)::text, ',' ORDER BY id)) FROM users"
    ),
    "ledger": (
        "SELECT count(*), md5(string_agg(row(job, table_name, row_key, before,"
        " after - 'updated_at', split_part(reason, ' < run time ', 1))::text, ','"
        " ORDER BY row_key)) FROM jobs_pipeline.change_ledger"
    ),
    "outbox": (
        "SELECT count(*), md5(string_agg(row(recipient, user_id, template, dedupe_key,"
        " payload, status)::text, ',' ORDER BY dedupe_key)) FROM jobs_pipeline.email_outbox"
    ),
}


@dataclass
class Figures:
    users: int
    expired: int
    generate_seconds: float
    dagster_seconds: float
    statement_seconds: float
    dagster_peak_rss_mb: float
    dagster_events: int
    downgraded: int
    ledger_rows: int
    outbox_rows: int
    rounds: int

    @property
    def ratio_dagster_to_statement(self) -> float:
        return self.dagster_seconds / self.statement_seconds


def admin(postgres: EmbeddedPostgres) -> psycopg.Connection:
    return psycopg.connect(
        host=str(postgres.socket_dir), user="postgres", dbname="postgres", autocommit=True
    )


def fresh_copy(postgres: EmbeddedPostgres, name: str) -> str:
    """A new database from the template. FILE_COPY: a file copy, far quicker for a big
    template than the default strategy, which writes every page to the WAL.
    """
    with admin(postgres) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        connection.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE)
            )
        )
    return postgres.url(name)


def drop(postgres: EmbeddedPostgres, name: str) -> None:
    with admin(postgres) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def prepare_template(postgres: EmbeddedPostgres, users: int, expired: int) -> float:
    """The app's schema, the project's, and the users; returns the generation's seconds."""
    postgres.ensure_database(TEMPLATE)
    url = postgres.url(TEMPLATE)
    engine = create_app_engine(url, statement_timeout_ms=3_600_000)
    try:
        create_app_schema(engine)
        upgrade(url)
        print(f"[{users} users] generating...", file=sys.stderr)
        started = time.perf_counter()
        generate_tier_users(engine, users, expired)
        seconds = time.perf_counter() - started
        print(f"[{users} users] generated in {seconds:.1f} s", file=sys.stderr)
        return seconds
    finally:
        engine.dispose()


def warm(engine: Engine) -> None:
    """The same untimed read in both copies, so neither starts colder than the other."""
    with engine.connect() as connection:
        connection.execute(text("SELECT count(*) FROM users WHERE tier <> 'free'")).scalar_one()


def digests(engine: Engine) -> dict[str, tuple[int, str]]:
    with engine.connect() as connection:
        rows = {name: connection.execute(text(query)).one() for name, query in DIGESTS.items()}
    return {name: (int(row[0]), str(row[1])) for name, row in rows.items()}


def run_statement(engine: Engine) -> tuple[float, int]:
    """(c): the seconds of the one statement (and its commit) and the users it downgraded."""
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        connection.execute(text("SET LOCAL work_mem = '256MB'"))
        now = connection.execute(text("SELECT clock_timestamp()")).scalar_one()
    started = time.perf_counter()
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        connection.execute(text("SET LOCAL work_mem = '256MB'"))
        params = {"now": now, "run_id": HAND_WRITTEN_RUN_ID, "job": JOB_NAME}
        downgraded = int(connection.exec_driver_sql(HAND_WRITTEN, params).scalar_one())
    return time.perf_counter() - started, downgraded


def one_round(postgres: EmbeddedPostgres, number: int, expired: int) -> dict[str, Any]:
    """(b) and (c), each in a fresh copy of the template; checks they wrote the same."""
    names = {"b": f"tier_b_{number}", "c": f"tier_c_{number}"}
    urls = {who: fresh_copy(postgres, name) for who, name in names.items()}
    engines = {who: create_app_engine(url) for who, url in urls.items()}
    try:
        for engine in engines.values():
            warm(engine)
        figures: dict[str, Any] = {}
        for who in ("b", "c") if number % 2 == 0 else ("c", "b"):
            if who == "b":
                figures["b"] = run_in_own_process("bench.dagster_tier_expiration", urls["b"])
            else:
                seconds, downgraded = run_statement(engines["c"])
                figures["c"] = {"seconds": seconds, "downgraded": downgraded}
        b_rows, c_rows = digests(engines["b"]), digests(engines["c"])
        result = figures["b"].get("result", {})
        if result.get("processed") != expired or figures["c"]["downgraded"] != expired:
            raise SystemExit(
                f"expected {expired} downgrades: (b) reported {result},"
                f" (c) downgraded {figures['c']['downgraded']}"
            )
        for name in DIGESTS:
            if b_rows[name] != c_rows[name]:
                raise SystemExit(
                    f"(b) and (c) disagree on {name}: {b_rows[name]} against {c_rows[name]}"
                )
        figures["rows"] = {name: count for name, (count, _digest) in b_rows.items()}
        return figures
    finally:
        for engine in engines.values():
            engine.dispose()
        for name in names.values():
            drop(postgres, name)


def measure(postgres: EmbeddedPostgres, users: int, expired: int, rounds: int) -> Figures:
    generate_seconds = prepare_template(postgres, users, expired)
    results = []
    for number in range(rounds):
        print(f"[{users} users] round {number + 1} of {rounds}...", file=sys.stderr)
        results.append(one_round(postgres, number, expired))
    best_b = min(results, key=lambda r: r["b"]["seconds"])["b"]
    rows = results[-1]["rows"]
    return Figures(
        users=users,
        expired=expired,
        generate_seconds=generate_seconds,
        dagster_seconds=float(best_b["seconds"]),
        statement_seconds=min(float(r["c"]["seconds"]) for r in results),
        dagster_peak_rss_mb=max(float(r["b"]["peak_rss_mb"]) for r in results),
        dagster_events=int(best_b["events"]),
        downgraded=expired,
        ledger_rows=int(rows["ledger"]),
        outbox_rows=int(rows["outbox"]),
        rounds=rounds,
    )


def table(figures: Figures) -> str:
    row = {
        "users": figures.users,
        "expired": figures.expired,
        "generate s": figures.generate_seconds,
        "(b) dagster s": figures.dagster_seconds,
        "(c) statement s": figures.statement_seconds,
        "b/c": figures.ratio_dagster_to_statement,
        "(b) peak MB": figures.dagster_peak_rss_mb,
        "(b) events": figures.dagster_events,
        "ledger rows": figures.ledger_rows,
        "outbox rows": figures.outbox_rows,
    }
    formats = {
        "generate s": ".1f",
        "(b) dagster s": ".2f",
        "(c) statement s": ".2f",
        "b/c": ".2f",
        "(b) peak MB": ".0f",
    }
    return render_table([row], formats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--expired", type=int, default=10_000)
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of (b) and (c); the best is kept"
    )
    parser.add_argument("--json", type=Path, default=Path("bench/results/tier_expiration.json"))
    args = parser.parse_args(argv)
    if args.users < 1 or args.expired < 1 or args.rounds < 1:
        parser.error("--users, --expired and --rounds take positive numbers")
    if args.expired > args.users:
        parser.error("--expired cannot be more than --users")

    with throwaway_embedded_postgres(prefix="jpbench") as postgres:
        figures = measure(postgres, args.users, args.expired, args.rounds)
    print(table(figures))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {**asdict(figures), "ratio_dagster_to_statement": figures.ratio_dagster_to_statement},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
