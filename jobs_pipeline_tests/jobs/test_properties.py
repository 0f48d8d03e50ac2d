"""Property-based tests: generated app data for every job, compared with plain-Python oracles.

Each example gets a database of its own (cloned from the session's template and
dropped afterwards), is run through a real Dagster instance, and what the job did
is compared with an independent re-statement of its rule in Python, over the rows
read before the run. The oracles never call the jobs' SQL or parsing functions.

Generated times are offsets from the database's clock read at the start of the
example and stay at least a minute away from every boundary of the rule; the
oracles compare with the run's own time (the `timestamp` of its result; for
global-override-check, whose result has none, the clock before and after the run),
so a slow machine cannot move a row across a boundary.
"""

import itertools
import json
import re
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from psycopg import sql
from sqlalchemy import Engine, insert, select, text

from jobs_pipeline.definitions import defs
from jobs_pipeline.interfaces.launching.plans import op_config_for
from jobs_pipeline.jobs.global_override_check import global_override_check_job
from jobs_pipeline.jobs.promo_cleanup import promo_cleanup_job
from jobs_pipeline.jobs.tier_expiration import tier_expiration_job
from jobs_pipeline.jobs.trial_reminder import trial_reminder_job
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.resources.mail import Mailer
from jobs_pipeline.storage.app_tables import (
    aims,
    global_config,
    promo_codes,
    promo_redemptions,
    shots,
    targets,
    user_discipline_stats,
    users,
)
from jobs_pipeline.storage.embedded import EmbeddedPostgres
from jobs_pipeline.storage.engine import create_app_engine
from jobs_pipeline.storage.project_tables import change_ledger, email_outbox
from jobs_pipeline_tests.support.app_data import db_now, table_rows
from jobs_pipeline_tests.support.running import failure_message, job_result, run_job

PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

TEMPLATE = "app_template"  # the session's template database (conftest.py)
_example_numbers = itertools.count()

MINUTE = timedelta(minutes=1)
DAY = timedelta(days=1)
TIERS = ("free", "premium", "pro")
SOURCES = ("default", "purchase", "promo", "trial", "admin")

rollup_job = defs.resolve_job_def("discipline_stats_rollup")


# -- a fresh database per example -------------------------------------------------------------


@dataclass(frozen=True)
class ExampleDatabase:
    engine: Engine  # the test's own connections, playing the app
    db: AppDatabase  # the jobs' resource
    now: datetime  # the database clock when the example started


@contextmanager
def fresh_database(postgres: EmbeddedPostgres) -> Iterator[ExampleDatabase]:
    """A database cloned from the template for one hypothesis example, dropped after it.

    Function-scoped fixtures are shared by every example of a test, so each example
    makes its own.
    """
    name = f"app_property_{next(_example_numbers)}"
    with admin_connection(postgres) as connection:
        connection.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE)
            )
        )
    url = postgres.url(name)
    engine = create_app_engine(url)
    try:
        yield ExampleDatabase(
            engine=engine,
            db=AppDatabase(url=url, retry_delay_seconds=0.1, max_retries=1),
            now=db_now(engine),
        )
    finally:
        engine.dispose()
        with admin_connection(postgres) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def admin_connection(postgres: EmbeddedPostgres) -> psycopg.Connection:
    return psycopg.connect(
        host=str(postgres.pgdata), user="postgres", dbname="postgres", autocommit=True
    )


def run_time(execution: dg.ExecuteInProcessResult) -> datetime:
    """The time the run compared with: its result's `timestamp`."""
    stamp = job_result(execution)["timestamp"]
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert moment.tzinfo is not None, stamp
    return moment


def rows_by_id(engine: Engine, table: Any) -> dict[Any, dict[str, Any]]:
    return {row["id"]: row for row in table_rows(engine, table)}


def ledger_rows(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    with engine.connect() as c:
        rows = c.execute(select(change_ledger).where(change_ledger.c.run_id == run_id)).all()
    return [dict(row._mapping) for row in rows]


def outbox_rows(engine: Engine) -> list[dict[str, Any]]:
    return table_rows(engine, email_outbox)


# -- shared strategies --------------------------------------------------------------------------

# PostgreSQL text and jsonb hold neither NUL nor lone surrogates.
stored_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)


def offsets(min_seconds: int, max_seconds: int) -> st.SearchStrategy[timedelta]:
    """Offsets from now of at least `min_seconds` either way, up to `max_seconds`."""
    magnitude = st.integers(min_seconds, max_seconds)
    return st.builds(
        lambda sign, seconds, micros: sign * timedelta(seconds=seconds, microseconds=micros),
        st.sampled_from([-1, 1]),
        magnitude,
        st.integers(0, 999_999),
    )


# Near now (minutes), around a day, and far (years), never within a minute of now.
time_offsets = st.one_of(
    offsets(60, 3_600),
    offsets(3_600, 3 * 86_400),
    offsets(3 * 86_400, 5 * 365 * 86_400),
)


# -- tier-expiration ------------------------------------------------------------------------------

tier_users = st.lists(
    st.fixed_dictionaries(
        {
            "tier": st.one_of(
                st.sampled_from(TIERS),
                st.sampled_from(["gold", "", "Free", "FREE", " free", "free "]),
                stored_text,
            ),
            "tier_source": st.one_of(
                st.sampled_from(SOURCES), st.sampled_from(["", "gift", "PURCHASE"]), stored_text
            ),
            "tier_expires_at": st.none() | time_offsets,
            "trial_ends_at": st.none() | time_offsets,
            "role": st.sampled_from(["user", "admin"]),
            "age": st.integers(1, 1_000),
        }
    ),
    max_size=25,
)


@PROPERTY_SETTINGS
@given(generated=tier_users, batch_size=st.integers(1, 7))
def test_tier_expiration_downgrades_exactly_the_expired_paid_users(
    postgres, instance, generated, batch_size
):
    with fresh_database(postgres) as example:
        engine, now = example.engine, example.now
        with engine.begin() as c:
            for n, user in enumerate(generated):
                at = now - timedelta(days=user["age"])
                c.execute(
                    insert(users).values(
                        email=f"user{n}@example.com",
                        role=user["role"],
                        tier=user["tier"],
                        tier_source=user["tier_source"],
                        tier_expires_at=shifted(now, user["tier_expires_at"]),
                        trial_ends_at=shifted(now, user["trial_ends_at"]),
                        created_at=at,
                        updated_at=at,
                    )
                )
        before = rows_by_id(engine, users)

        execution = run_job(
            tier_expiration_job, example.db, instance, allow_large=True, batch_size=batch_size
        )

        assert execution.success, failure_message(execution)
        ran_at = run_time(execution)
        # The oracle: a tier other than 'free' whose expiry is before the run time.
        expected_downgraded = {
            user_id
            for user_id, row in before.items()
            if row["tier"] != "free"
            and row["tier_expires_at"] is not None
            and row["tier_expires_at"] < ran_at
        }
        event(f"tier-expiration: {min(len(expected_downgraded), 3)}+ downgraded")
        event(f"tier-expiration: {min(len(before) - len(expected_downgraded), 3)}+ kept")
        after = rows_by_id(engine, users)
        assert set(after) == set(before)
        for user_id, row in before.items():
            if user_id in expected_downgraded:
                expected = {
                    **row,
                    "tier": "free",
                    "tier_source": "default",
                    "tier_expires_at": None,
                    "updated_at": ran_at,
                }
                assert after[user_id] == expected, (row, after[user_id])
            else:
                assert after[user_id] == row
        result = job_result(execution)
        assert (result["processed"], result["failed"], result["skipped"]) == (
            len(expected_downgraded),
            0,
            0,
        )
        # Each downgrade queued its one tier-expired email and wrote its ledger row.
        emails = outbox_rows(engine)
        assert Counter(e["user_id"] for e in emails) == Counter(expected_downgraded)
        assert all(e["template"] == "tier-expired" for e in emails)
        for email in emails:
            assert email["recipient"] == before[email["user_id"]]["email"]
            assert email["payload"]["previous_tier"] == before[email["user_id"]]["tier"]
        ledger = ledger_rows(engine, execution.run_id)
        assert Counter(r["row_key"] for r in ledger) == Counter(
            str(user_id) for user_id in expected_downgraded
        )
        assert {r["table_name"] for r in ledger} <= {"users"}


def shifted(now: datetime, offset: timedelta | None) -> datetime | None:
    return None if offset is None else now + offset


# -- promo-cleanup ------------------------------------------------------------------------------

promo_code_rows = st.lists(
    st.fixed_dictionaries(
        {
            "is_active": st.booleans(),
            "valid_until": st.one_of(st.none(), time_offsets, time_offsets),
            "valid_from": st.none() | time_offsets,
            "tier": st.sampled_from(["premium", "pro"]),
            "max_redemptions": st.none() | st.integers(1, 100),
        }
    ),
    min_size=1,
    max_size=10,
)

# Around the retention cutoff (within a few days either side), or at any age at all.
redemption_ages = st.one_of(
    st.tuples(st.just("around_cutoff"), offsets(60, 4 * 86_400)),
    st.tuples(
        st.just("age"),
        st.integers(60, 900 * 86_400).map(lambda seconds: timedelta(seconds=seconds)),
    ),
)


@PROPERTY_SETTINGS
@given(
    codes=promo_code_rows,
    redemptions=st.lists(
        st.tuples(st.integers(0, 9), st.integers(0, 2), redemption_ages), min_size=1, max_size=20
    ),
    retention_days=st.integers(1, 800),
    batch_size=st.integers(1, 7),
)
def test_promo_cleanup_deactivates_expired_codes_and_deletes_old_redemptions(
    postgres, instance, codes, redemptions, retention_days, batch_size
):
    with fresh_database(postgres) as example:
        engine, now = example.engine, example.now
        retention = timedelta(days=retention_days)
        with engine.begin() as c:
            user_ids = [
                c.execute(
                    insert(users).values(email=f"r{n}@example.com").returning(users.c.id)
                ).scalar_one()
                for n in range(3)
            ]
            code_ids = [
                c.execute(
                    insert(promo_codes)
                    .values(
                        code=f"CODE{n}",
                        tier=code["tier"],
                        is_active=code["is_active"],
                        valid_from=shifted(now, code["valid_from"]),
                        valid_until=shifted(now, code["valid_until"]),
                        max_redemptions=code["max_redemptions"],
                    )
                    .returning(promo_codes.c.id)
                ).scalar_one()
                for n, code in enumerate(codes)
            ]
            for code_index, user_index, (kind, offset) in redemptions:
                redeemed_at = now - retention + offset if kind == "around_cutoff" else now - offset
                c.execute(
                    insert(promo_redemptions).values(
                        promo_code_id=code_ids[code_index % len(code_ids)],
                        user_id=user_ids[user_index],
                        redeemed_at=redeemed_at,
                    )
                )
        codes_before = rows_by_id(engine, promo_codes)
        redemptions_before = rows_by_id(engine, promo_redemptions)

        execution = run_job(
            promo_cleanup_job,
            example.db,
            instance,
            allow_large=True,
            batch_size=batch_size,
            redemption_retention_days=retention_days,
        )

        assert execution.success, failure_message(execution)
        ran_at = run_time(execution)
        # The oracle: an active code with a valid_until before the run time is
        # deactivated (NULL never expires); a redemption older than the retention goes.
        expected_deactivated = {
            code_id
            for code_id, row in codes_before.items()
            if row["is_active"] and row["valid_until"] is not None and row["valid_until"] < ran_at
        }
        expected_codes = {
            code_id: {**row, "is_active": False} if code_id in expected_deactivated else row
            for code_id, row in codes_before.items()
        }
        cutoff = ran_at - retention
        expected_redemptions = {
            redemption_id: row
            for redemption_id, row in redemptions_before.items()
            if not row["redeemed_at"] < cutoff
        }
        event(f"promo-cleanup: {min(len(expected_deactivated), 2)}+ codes deactivated")
        deleted_count = len(redemptions_before) - len(expected_redemptions)
        event(f"promo-cleanup: {min(deleted_count, 2)}+ redemptions deleted")
        event(f"promo-cleanup: {min(len(expected_redemptions), 2)}+ redemptions kept")
        assert rows_by_id(engine, promo_codes) == expected_codes
        assert rows_by_id(engine, promo_redemptions) == expected_redemptions
        result = job_result(execution)
        assert (result["codesDeactivated"], result["redemptionsDeleted"]) == (
            len(expected_deactivated),
            len(redemptions_before) - len(expected_redemptions),
        )
        ledger = ledger_rows(engine, execution.run_id)
        assert Counter((r["table_name"], r["row_key"]) for r in ledger) == Counter(
            [("promo_codes", str(code_id)) for code_id in expected_deactivated]
            + [
                ("promo_redemptions", str(redemption_id))
                for redemption_id in set(redemptions_before) - set(expected_redemptions)
            ]
        )


# -- global-override-check ----------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    stored_text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(stored_text, children, max_size=4)
    ),
    max_leaves=12,
)

PLUS_FIVE = timezone(timedelta(hours=5))


@dataclass(frozen=True)
class Timestamp:
    """An expiry written one of the ways an admin may write it, and the moment it means."""

    moment: datetime  # aware, what the text means
    style: str  # "Z", "+05:00" or "naive" (read as UTC)
    fraction: bool

    def render(self) -> str:
        t = self.moment.astimezone(PLUS_FIVE if self.style == "+05:00" else UTC)
        # By hand: strftime's %Y does not pad years before 1000 on every platform.
        stamp = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        fraction = f".{t.microsecond:06d}" if self.fraction else ""
        return stamp + fraction + {"Z": "Z", "+05:00": "+05:00", "naive": ""}[self.style]


def timestamps(now: datetime, side: str = "either") -> st.SearchStrategy[Timestamp]:
    """Expiries near now (minutes to years away) or anywhere in years 1-9999, before
    now (`side="past"`), after it (`"future"`) or either.
    """

    def toward(offset: timedelta) -> timedelta:
        return {"past": -abs(offset), "future": abs(offset), "either": offset}[side]

    near = time_offsets.map(lambda offset: now + toward(offset))
    far = st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ).filter(
        lambda moment: (
            abs(moment - now) > 2 * MINUTE
            and {"past": moment < now, "future": moment > now, "either": True}[side]
        )
    )
    return st.builds(
        lambda moment, style, fraction: Timestamp(
            moment=moment if fraction else moment.replace(microsecond=0),
            style=style,
            fraction=fraction,
        ),
        st.one_of(near, near, far),
        st.sampled_from(["Z", "+05:00", "naive"]),
        st.booleans(),
    )


# The oracle's own reading of an ISO-8601 timestamp: date, 'T', time with optional
# seconds and fraction, and an optional 'Z' or +HH:MM offset (none means UTC).
ISO_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?(Z|[+-]\d{2}:\d{2})?"
)


def oracle_moment(value: str) -> datetime | None:
    match = ISO_TIMESTAMP.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        # An offset of 24 hours or more (+25:00) is no offset at all: malformed.
        tz = UTC if zone is None or zone == "Z" else zone_of(zone)
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")),
            tzinfo=tz,
        )
    except ValueError:
        return None


def zone_of(offset: str) -> timezone:
    sign = -1 if offset[0] == "-" else 1
    return timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))


def oracle_override(value: Any) -> tuple[str, datetime] | None:
    """(tier, expiry) of a well-formed override; None when it is malformed."""
    if not isinstance(value, dict):
        return None
    tier, expires_at = value.get("tier"), value.get("expires_at")
    if not isinstance(tier, str) or tier not in TIERS or not isinstance(expires_at, str):
        return None
    moment = oracle_moment(expires_at)
    return None if moment is None else (tier, moment)


bad_timestamp_texts = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "tomorrow",
            "2026-13-01T00:00:00Z",
            "2026-02-30T10:00:00Z",
            "2026-01-01T25:00:00Z",
            "2026-01-01T10:00:00+25:00",
            "01/02/2026 10:00",
            "1767225600",
            "null",
        ]
    ),
    stored_text.filter(lambda s: oracle_moment(s.strip()) is None and not s.strip()[:1].isdigit()),
)


OVERRIDE_KINDS = ("none", "past", "future", "near miss", "near miss", "near miss", "any JSON")


def override_values(now: datetime, kind: str) -> st.SearchStrategy[Any]:
    """A valid override (expiring in the past or the future), a near miss of one of its
    parts, or arbitrary JSON. Only steers generation: the oracle judges each value.
    """

    def valid_override(side: str) -> st.SearchStrategy[dict[str, str]]:
        return st.builds(
            lambda tier, stamp: {"tier": tier, "expires_at": stamp.render()},
            st.sampled_from(TIERS),
            timestamps(now, side),
        )

    valid = valid_override("either")
    bad_tier = st.one_of(
        st.sampled_from(["gold", "", "Pro", "FREE", " free", "premium "]),
        stored_text.filter(lambda s: s not in TIERS),
        json_values.filter(lambda v: not isinstance(v, str)),
    )
    bad_expiry = st.one_of(
        bad_timestamp_texts, json_values.filter(lambda v: not isinstance(v, str))
    )
    good_expiry = timestamps(now).map(lambda stamp: stamp.render())

    def drop(key: str) -> Any:
        return lambda value: {k: v for k, v in value.items() if k != key}

    wrong_tier = st.builds(lambda t, e: {"tier": t, "expires_at": e}, bad_tier, good_expiry)
    wrong_expiry = st.builds(
        lambda t, e: {"tier": t, "expires_at": e}, st.sampled_from(TIERS), bad_expiry
    )
    near_misses = st.one_of(
        wrong_tier,
        wrong_tier,
        wrong_expiry,
        wrong_expiry,
        valid.map(drop("tier")),
        valid.map(drop("expires_at")),
        st.builds(lambda v: [v], valid),
        valid.map(json.dumps),
    )
    if kind in ("past", "future"):
        return valid_override(kind)
    return {"near miss": near_misses, "any JSON": json_values}[kind]


def config_rows(engine: Engine) -> list[tuple[str, str, datetime]]:
    """Every key with its value exactly as stored (jsonb's text) and its updated_at."""
    with engine.connect() as c:
        return [
            (row[0], row[1], row[2])
            for row in c.execute(
                text("SELECT key, value::text, updated_at FROM global_config ORDER BY key")
            )
        ]


@PROPERTY_SETTINGS
@given(data=st.data(), kind=st.sampled_from(OVERRIDE_KINDS))
def test_global_override_check_clears_only_a_valid_expired_override(postgres, instance, data, kind):
    with fresh_database(postgres) as example:
        engine, now = example.engine, example.now
        has_override = kind != "none"
        value = data.draw(override_values(now, kind), label="override") if has_override else None
        with engine.begin() as c:
            c.execute(
                insert(global_config).values(key="maintenance_banner", value={"text": "hello"})
            )
            if has_override:
                c.execute(
                    text(
                        "INSERT INTO global_config (key, value, updated_at)"
                        " VALUES ('global_tier_override', CAST(:value AS jsonb), :at)"
                    ),
                    {"value": json.dumps(value), "at": now - DAY},
                )
        before = config_rows(engine)
        with engine.connect() as c:
            stored: Any = c.execute(
                select(global_config.c.value).where(global_config.c.key == "global_tier_override")
            ).scalar_one_or_none()

        execution = run_job(global_override_check_job, example.db, instance)

        finished = db_now(engine)
        after = config_rows(engine)
        ledger = ledger_rows(engine, execution.run_id)
        parsed = oracle_override(stored) if has_override else None
        event(
            "override: "
            + ("none" if not has_override else "malformed" if parsed is None else "well-formed")
        )
        if not has_override:
            assert execution.success, failure_message(execution)
            assert job_result(execution) == {"action": "none"}
            assert after == before and ledger == []
            return
        if parsed is None:
            assert not execution.success, f"the malformed override {stored!r} was accepted"
            assert "global_tier_override" in failure_message(execution)
            assert after == before, "a malformed override must stay byte for byte"
            assert ledger == []
            return
        assert execution.success, (stored, failure_message(execution))
        tier, expires = parsed
        # This job's result carries no run time: it lies between `now` and `finished`,
        # and the generated expiries keep a minute away from `now`.
        assert not now <= expires < finished, "the run took longer than the margin"
        event("override: expired" if expires < now else "override: active")
        if expires < now:
            assert job_result(execution) == {
                "action": "cleared",
                "previousTier": tier,
                "expiredAt": stored["expires_at"],
            }
            assert after == [row for row in before if row[0] != "global_tier_override"]
            assert [(r["table_name"], r["row_key"]) for r in ledger] == [
                ("global_config", "global_tier_override")
            ]
            assert ledger[0]["before"]["value"] == stored
        else:
            assert job_result(execution) == {
                "action": "active",
                "tier": tier,
                "expiresAt": stored["expires_at"],
            }
            assert after == before and ledger == []


# -- trial-reminder -----------------------------------------------------------------------------

# Each stretch between the boundaries (ended, under a day, one to three days, later),
# a minute clear of them.
trial_offsets = st.sampled_from(
    [
        (-2 * 86_400, -60),
        (60, 86_400 - 60),
        (86_400 + 60, 3 * 86_400 - 60),
        (3 * 86_400 + 60, 5 * 86_400),
    ]
).flatmap(lambda stretch: st.integers(*stretch))

trial_users = st.lists(
    st.fixed_dictionaries(
        {
            "tier": st.sampled_from(TIERS),
            "tier_source": st.sampled_from(SOURCES),
            "trial_ends_in": st.one_of(st.none(), trial_offsets, trial_offsets),
        }
    ),
    max_size=20,
)


def run_with_mailer(job: dg.JobDefinition, db: AppDatabase, instance, mailer: Mailer):
    return job.execute_in_process(
        resources={"db": db, "mailer": mailer}, instance=instance, raise_on_error=False
    )


def expected_reminder(row: dict[str, Any], ran_at: datetime) -> str | None:
    """The oracle: which reminder a user is due, by time left and whether they pay."""
    if row["trial_ends_at"] is None:
        return None
    if row["tier_source"] == "purchase" and row["tier"] != "free":
        return None
    left = row["trial_ends_at"] - ran_at
    if left <= timedelta(0):
        return None
    if left <= DAY:
        return "trial-ending-1d"
    if left <= 3 * DAY:
        return "trial-ending-3d"
    return None


@PROPERTY_SETTINGS
@given(generated=trial_users)
def test_trial_reminder_queues_the_due_reminder_once(postgres, instance, generated):
    with fresh_database(postgres) as example, tempfile.TemporaryDirectory() as folder:
        engine, now = example.engine, example.now
        with engine.begin() as c:
            for n, user in enumerate(generated):
                seconds = user["trial_ends_in"]
                c.execute(
                    insert(users).values(
                        email=f"trial{n}@example.com",
                        tier=user["tier"],
                        tier_source=user["tier_source"],
                        trial_ends_at=None if seconds is None else now + timedelta(seconds=seconds),
                    )
                )
        before = rows_by_id(engine, users)
        mailer = Mailer(outbox_dir=folder, sender="journal@example.com")

        first = run_with_mailer(trial_reminder_job, example.db, instance, mailer)

        assert first.success, failure_message(first)
        ran_at = run_time(first)
        expected = {
            user_id: template
            for user_id, row in before.items()
            if (template := expected_reminder(row, ran_at)) is not None
        }
        for template in sorted(set(expected.values())):
            event(f"trial-reminder: some {template}")
        queued = outbox_rows(engine)
        assert Counter(row["user_id"] for row in queued) == Counter(list(expected))
        assert {row["user_id"]: row["template"] for row in queued} == expected
        for row in queued:
            assert row["recipient"] == before[row["user_id"]]["email"]
            assert row["status"] == "sent"
        result = job_result(first)
        templates = Counter(expected.values())
        assert (result["queued3d"], result["queued1d"], result["sent"]) == (
            templates["trial-ending-3d"],
            templates["trial-ending-1d"],
            len(expected),
        )
        assert len(list(Path(folder).glob("*.eml"))) == len(expected)
        assert rows_by_id(engine, users) == before

        second = run_with_mailer(trial_reminder_job, example.db, instance, mailer)

        assert second.success, failure_message(second)
        again = job_result(second)
        assert (again["queued3d"], again["queued1d"], again["sent"]) == (0, 0, 0)
        assert outbox_rows(engine) == queued
        assert len(list(Path(folder).glob("*.eml"))) == len(expected)


# -- discipline-stats-rollup --------------------------------------------------------------------

flags = st.sampled_from([True, False, None])
journal_users = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.uuids(version=4),
            "targets": st.lists(
                st.fixed_dictionaries(
                    {
                        "abort_trigger": st.sampled_from([None, "close below 100", ""]),
                        "abort_triggered": st.booleans(),
                        "aims": st.lists(st.lists(st.tuples(flags, flags), max_size=4), max_size=3),
                    }
                ),
                max_size=3,
            ),
            "stale": st.none() | st.tuples(*[st.integers(0, 50)] * 7),
        }
    ),
    min_size=1,
    max_size=14,
    unique_by=lambda user: user["id"],
)

STATS = (
    "total_shots",
    "stop_loss_honored_count",
    "stop_loss_ignored_count",
    "profit_target_honored_count",
    "profit_target_ignored_count",
    "abort_trigger_honored_count",
    "abort_trigger_ignored_count",
)


def oracle_stats(engine: Engine) -> dict[uuid.UUID, tuple[int, ...]]:
    """Every user's statistics, counted in Python over the raw rows."""
    with engine.connect() as c:
        user_ids = list(c.execute(select(users.c.id)).scalars())
        target_rows = c.execute(
            select(
                targets.c.id, targets.c.user_id, targets.c.abort_trigger, targets.c.abort_triggered
            )
        ).all()
        aim_owner = dict(c.execute(select(aims.c.id, aims.c.target_id)).all())
        shot_rows = c.execute(
            select(shots.c.aim_id, shots.c.stop_loss_honored, shots.c.profit_target_honored)
        ).all()
    target_owner = {target_id: user_id for target_id, user_id, _, _ in target_rows}
    counts = {user_id: [0] * 7 for user_id in user_ids}
    for aim_id, stop_loss, profit_target in shot_rows:
        tally = counts[target_owner[aim_owner[aim_id]]]
        tally[0] += 1
        tally[1] += stop_loss is True
        tally[2] += stop_loss is False
        tally[3] += profit_target is True
        tally[4] += profit_target is False
    for _target_id, user_id, abort_trigger, abort_triggered in target_rows:
        counts[user_id][5] += abort_triggered is True
        counts[user_id][6] += abort_trigger is not None and abort_triggered is False
    return {user_id: tuple(tally) for user_id, tally in counts.items()}


def stored_stats(engine: Engine) -> dict[uuid.UUID, tuple[Any, ...]]:
    with engine.connect() as c:
        rows = c.execute(
            select(
                user_discipline_stats.c.user_id,
                *(user_discipline_stats.c[name] for name in STATS),
                user_discipline_stats.c.updated_at,
            )
        ).all()
    return {row[0]: tuple(row[1:]) for row in rows}


@PROPERTY_SETTINGS
@given(
    generated=journal_users,
    shard_range=st.one_of(
        st.just([0, 15]), st.tuples(st.integers(0, 15), st.integers(0, 15)).map(sorted)
    ),
)
def test_rollup_matches_a_python_count_over_the_raw_rows(
    postgres, instance, generated, shard_range
):
    first_shard, last_shard = shard_range
    with fresh_database(postgres) as example:
        engine, now = example.engine, example.now
        with engine.begin() as c:
            for n, user in enumerate(generated):
                c.execute(insert(users).values(id=user["id"], email=f"j{n}@example.com"))
                if user["stale"] is not None:
                    c.execute(
                        insert(user_discipline_stats).values(
                            user_id=user["id"],
                            updated_at=now - DAY,
                            **dict(zip(STATS, user["stale"], strict=True)),
                        )
                    )
                for target in user["targets"]:
                    target_id = c.execute(
                        insert(targets)
                        .values(
                            user_id=user["id"],
                            symbol="SPY",
                            abort_trigger=target["abort_trigger"],
                            abort_triggered=target["abort_triggered"],
                        )
                        .returning(targets.c.id)
                    ).scalar_one()
                    for aim in target["aims"]:
                        aim_id = c.execute(
                            insert(aims).values(target_id=target_id).returning(aims.c.id)
                        ).scalar_one()
                        for stop_loss, profit_target in aim:
                            c.execute(
                                insert(shots).values(
                                    aim_id=aim_id,
                                    stop_loss_honored=stop_loss,
                                    profit_target_honored=profit_target,
                                )
                            )
        expected_all = oracle_stats(engine)
        before = stored_stats(engine)

        execution = rollup_job.execute_in_process(
            run_config=op_config_for(rollup_job),
            resources={"db": example.db},
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": f"{first_shard:02d}",
                "dagster/asset_partition_range_end": f"{last_shard:02d}",
            },
            raise_on_error=False,
        )

        assert execution.success, failure_message(execution)
        ran_at = run_time(execution)
        # A user's shard: the low four bits of the last byte of the id.
        in_run = {
            user_id
            for user_id in expected_all
            if first_shard <= user_id.bytes[15] % 16 <= last_shard
        }
        # Only rows whose counts change are written: a row already right keeps its time.
        changed = {u for u in in_run if u not in before or before[u][:-1] != expected_all[u]}
        expected = {
            user_id: (*expected_all[user_id], ran_at) if user_id in changed else before[user_id]
            for user_id in expected_all
            if user_id in in_run or user_id in before
        }
        event(f"rollup: {min(len(in_run), 3)}+ users in the run's shards")
        event(f"rollup: {min(len(set(expected_all) - in_run), 3)}+ users outside them")
        assert stored_stats(engine) == expected
        result = job_result(execution)
        assert (result["usersUpdated"], result["usersComputed"]) == (len(changed), len(in_run))
        assert result["shotsCounted"] == sum(expected_all[user_id][0] for user_id in in_run)
        checks = execution.get_asset_check_evaluations()
        assert checks and all(check.passed for check in checks)
