"""The learned guard: a run far over what its job normally changes stops before writing.

The history is real: scheduled tier-expiration runs (tag `dagster/schedule_name`) on a
real Dagster instance, each downgrading a batch of expired users in a real database.
"""

import math
import statistics
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta

import dagster as dg
import pytest
from psycopg import sql
from sqlalchemy import Engine, func, insert, literal, select

from jobs_pipeline.interfaces.launching.plans import op_config_for
from jobs_pipeline.job_parts.guard import number
from jobs_pipeline.job_parts.learned_normal import learned_bound, learned_normal
from jobs_pipeline.jobs.promo_cleanup import PromoCleanupResult, promo_cleanup_job
from jobs_pipeline.jobs.tier_expiration import (
    TierExpirationResult,
    has_expired_paid_tier,
    tier_expiration_job,
)
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.storage.app_tables import Timestamptz, promo_redemptions, users
from jobs_pipeline.storage.engine import create_app_engine
from jobs_pipeline.storage.project_tables import change_ledger, email_outbox
from jobs_pipeline.tags import GUARD_REFUSED_TAG
from jobs_pipeline_tests.support.app_data import add_promo_code, add_user, db_now, table_rows
from jobs_pipeline_tests.support.postgres import TEMPLATE, admin_connection
from jobs_pipeline_tests.support.running import (
    failure_message,
    job_result,
    log_messages,
    run_job,
    temporary_instance,
)

JOB = "tier_expiration"
SCHEDULED = {"dagster/schedule_name": "tier_expiration_schedule"}
# Thirty nights of about 300 downgrades (285 to 315), oldest first.
HISTORY = [285 + (7 * night) % 31 for night in range(30)]


def add_paying_users(engine: Engine, count: int, *, expired: bool) -> None:
    """`count` premium users in one statement: expired an hour ago, or paid for a year."""
    now = db_now(engine)
    expires = now - timedelta(hours=1) if expired else now + timedelta(days=365)
    rows = select(
        func.concat(func.gen_random_uuid(), "@example.com"),
        literal("premium"),
        literal("purchase"),
        literal(expires, Timestamptz),
    ).select_from(func.generate_series(1, count))
    with engine.begin() as connection:
        connection.execute(
            insert(users).from_select(["email", "tier", "tier_source", "tier_expires_at"], rows)
        )


def expired_count(engine: Engine) -> int:
    expired = has_expired_paid_tier(db_now(engine))
    with engine.connect() as connection:
        statement = select(func.count()).select_from(users).where(expired)
        return int(connection.execute(statement).scalar_one())


def run_scheduled(db: AppDatabase, instance: dg.DagsterInstance, **op_config):
    """A run as the schedule starts it: tagged with the schedule's name."""
    return tier_expiration_job.execute_in_process(
        run_config=op_config_for(tier_expiration_job, **op_config),
        resources={"db": db},
        instance=instance,
        tags=SCHEDULED,
        raise_on_error=False,
    )


def record_nights(
    engine: Engine, db: AppDatabase, instance: dg.DagsterInstance, nights: Sequence[int]
) -> None:
    """One real scheduled run per night, each downgrading that night's expired users."""
    for downgrades in nights:
        add_paying_users(engine, downgrades, expired=True)
        execution = run_scheduled(db, instance)
        assert execution.success, failure_message(execution)
        assert job_result(execution)["processed"] == downgrades


@contextmanager
def scratch_database(postgres) -> Iterator[str]:
    """An app database of its own, for history shared by the tests of this module."""
    name = f"app_history_{uuid.uuid4().hex[:12]}"
    with admin_connection(postgres) as connection:
        connection.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE)
            )
        )
    try:
        yield postgres.url(name)
    finally:
        with admin_connection(postgres) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="module")
def history(postgres) -> Iterator[dg.DagsterInstance]:
    """An instance holding 30 scheduled runs of about 300 downgrades, then newer runs the
    normal must pass over: an operator's manual run, a failed scheduled run, a dry one.
    """
    with (
        temporary_instance(set_dagster_home=False) as instance,
        scratch_database(postgres) as url,
    ):
        engine = create_app_engine(url)
        db = AppDatabase(url=url, retry_delay_seconds=0.1, max_retries=1)
        add_paying_users(engine, 2_000, expired=False)
        record_nights(engine, db, instance, HISTORY)

        add_paying_users(engine, 900, expired=True)
        assert run_job(tier_expiration_job, db, instance, allow_large=True).success
        assert not run_scheduled(db, instance, as_of="2030-01-01T00:00:00Z").success
        assert run_scheduled(db, instance, dry_run=True).success
        engine.dispose()
        yield instance


def p95_by_hand(values: Sequence[int]) -> float:
    """The 95th percentile, linear between the two nearest ranks (pandas' default)."""
    ordered = sorted(values)
    rank = 0.95 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def test_the_normal_is_learned_from_the_last_successful_scheduled_runs(history):
    normal = learned_normal(history, JOB, TierExpirationResult, "processed")

    assert normal.counts == tuple(reversed(HISTORY))  # newest first; the newer runs passed over
    assert normal.median == statistics.median(HISTORY)
    assert normal.p95 == pytest.approx(p95_by_hand(HISTORY))
    assert normal.bound == math.ceil(3 * p95_by_hand(HISTORY))
    assert 900 < normal.bound < 1_000
    assert (
        learned_normal(history, JOB, TierExpirationResult, "processed", window=10).counts
        == normal.counts[:10]
    )


def test_the_bound_needs_enough_runs_and_never_drops_below_the_floor():
    assert learned_bound([], k=3, floor=50, min_runs=5) == (None, None, None)
    assert learned_bound([300, 310, 320], k=3, floor=50, min_runs=5)[2] is None
    median, p95, bound = learned_bound([2, 3, 2, 4, 3], k=3, floor=50, min_runs=5)
    assert (median, p95, bound) == (3.0, pytest.approx(3.8), 50)
    assert learned_bound([100] * 5, k=2.5, floor=50, min_runs=5) == (100.0, 100.0, 250)


def test_a_run_of_3000_when_300_is_normal_stops_and_writes_nothing(engine, db, history):
    add_paying_users(engine, 16_000, expired=False)
    add_paying_users(engine, 3_000, expired=True)  # 16% of paying users: the fixed caps allow it

    execution = run_job(tier_expiration_job, db, history)

    assert not execution.success
    normal = learned_normal(history, JOB, TierExpirationResult, "processed")
    assert failure_message(execution) == (
        "Refusing to downgrade paying users: this run would change 3000 rows, over the learned"
        f" bound of {normal.bound}: the last 30 scheduled runs changed a median of"
        f" {number(normal.median)} and a 95th percentile of {number(normal.p95)} (processed);"
        " the bound is the larger of 3 times that percentile (learned_k) and 50"
        " (learned_floor). Nothing was changed. Look at what it would change first"
        " (jobs-pipeline run tier-expiration --dry-run); if it is right, run it again allowing"
        " it: jobs-pipeline run tier-expiration --allow-large (or allow_large: true in the"
        " Launchpad or the admin API's body). That skips both guards."
    )
    assert expired_count(engine) == 3_000
    assert table_rows(engine, change_ledger) == [] and table_rows(engine, email_outbox) == []
    assert history.get_run_by_id(execution.run_id).tags[GUARD_REFUSED_TAG] == "true"

    dry = run_job(tier_expiration_job, db, history, dry_run=True)
    assert dry.success and job_result(dry)["wouldProcess"] == 3_000
    assert any(
        m.startswith("[tier-expiration] A real run would stop here: Refusing to downgrade")
        for m in log_messages(history, dry)
    )

    allowed = run_job(tier_expiration_job, db, history, allow_large=True)
    assert allowed.success and job_result(allowed)["processed"] == 3_000
    for passed in (dry, allowed):
        assert GUARD_REFUSED_TAG not in history.get_run_by_id(passed.run_id).tags


def test_a_run_of_330_when_300_is_normal_goes_ahead(engine, db, history):
    add_paying_users(engine, 16_000, expired=False)
    add_paying_users(engine, 330, expired=True)

    execution = run_job(tier_expiration_job, db, history)

    assert execution.success, failure_message(execution)
    assert job_result(execution)["processed"] == 330
    assert expired_count(engine) == 0
    normal = learned_normal(history, JOB, TierExpirationResult, "processed")
    assert (
        f"[tier-expiration] Learned bound of processed: {normal.bound} (median"
        f" {number(normal.median)}, 95th percentile {number(normal.p95)} over the last 30"
        " scheduled runs, learned_k 3, learned_floor 50); this run would change 330: within it"
    ) in log_messages(history, execution)


def test_with_only_3_recorded_runs_only_the_fixed_caps_apply(engine, db):
    with temporary_instance(set_dagster_home=False) as instance:
        add_paying_users(engine, 2_000, expired=False)
        record_nights(engine, db, instance, [300, 290, 310])
        add_paying_users(engine, 16_000, expired=False)
        add_paying_users(engine, 3_000, expired=True)

        execution = run_job(tier_expiration_job, db, instance, max_downgrades=50_000)

        assert execution.success, failure_message(execution)
        assert job_result(execution)["processed"] == 3_000
        assert (
            "[tier-expiration] Learned bound of processed: 3 past scheduled runs, fewer than"
            " learned_min_runs (5); only the fixed caps apply"
        ) in log_messages(instance, execution)


def test_the_fixed_caps_stay_the_outer_bound(engine, db, history):
    """Within the learned bound (under 1,000) but over max_downgrades: still refused."""
    add_paying_users(engine, 16_000, expired=False)
    add_paying_users(engine, 400, expired=True)

    execution = run_job(tier_expiration_job, db, history, max_downgrades=350)

    assert not execution.success
    assert "over the cap of at most 350 rows (max_downgrades)" in failure_message(execution)
    assert expired_count(engine) == 400


def add_redemptions(engine: Engine, code, user, count: int, *, days_ago: int) -> None:
    """`count` redemptions of `code` by `user`, `days_ago` days old, in one statement."""
    redeemed_at = db_now(engine) - timedelta(days=days_ago)
    rows = select(literal(code), literal(user), literal(redeemed_at, Timestamptz)).select_from(
        func.generate_series(1, count)
    )
    with engine.begin() as connection:
        connection.execute(
            insert(promo_redemptions).from_select(["promo_code_id", "user_id", "redeemed_at"], rows)
        )


def test_promo_cleanup_learns_each_count_with_its_own_floor(engine, db):
    """Five weeks of about 10 old redemptions; then 100 stops (a floor of 5 lets the learned
    bound fall below the default 1,000), though 100 of 1,100 is well within the fixed caps.
    """
    with engine.begin() as c:
        user, code = add_user(c), add_promo_code(c, "WEEKLY")
    add_redemptions(engine, code, user, 1_000, days_ago=10)
    with temporary_instance(set_dagster_home=False) as instance:
        for old in (9, 11, 10, 12, 10):
            add_redemptions(engine, code, user, old, days_ago=400)
            execution = promo_cleanup_job.execute_in_process(
                run_config=op_config_for(promo_cleanup_job, learned_redemptions_floor=5),
                resources={"db": db},
                instance=instance,
                tags={"dagster/schedule_name": "promo_cleanup_schedule"},
                raise_on_error=False,
            )
            assert job_result(execution)["redemptionsDeleted"] == old
        add_redemptions(engine, code, user, 100, days_ago=400)

        refused = run_job(promo_cleanup_job, db, instance, learned_redemptions_floor=5)

        normal = learned_normal(
            instance, "promo_cleanup", PromoCleanupResult, "redemptions_deleted", floor=5
        )
        assert normal.counts == (10, 12, 10, 11, 9) and normal.bound == 36
        assert not refused.success
        assert failure_message(refused).startswith(
            "Refusing to delete promo redemptions: this run would change 100 rows, over the"
            " learned bound of 36: the last 5 scheduled runs changed a median of 10 and a 95th"
            " percentile of 11.8 (redemptionsDeleted); the bound is the larger of 3 times that"
            " percentile (learned_k) and 5 (learned_redemptions_floor)."
        )
        assert len(table_rows(engine, promo_redemptions)) == 1_100
        assert (
            "[promo-cleanup] Learned bound of codesDeactivated: 100 (median 0, 95th percentile 0"
            " over the last 5 scheduled runs, learned_k 3, learned_codes_floor 100); this run"
            " would change 0: within it"
        ) in log_messages(instance, refused)
