"""Every job, and an undo, run as a role holding only the grants of
`jobs_pipeline/storage/sql/least_privilege.sql`; that role cannot change the app's structure
nor write what the jobs never write.
"""

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import dagster as dg
import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, Table, exc, func, select
from sqlalchemy.engine import make_url

from jobs_pipeline.definitions import defs
from jobs_pipeline.interfaces.launching.plans import op_config_for
from jobs_pipeline.jobs.discipline_stats_rollup import ALL_SHARDS_TAGS
from jobs_pipeline.jobs.email_delivery import email_delivery_job
from jobs_pipeline.jobs.global_override_check import global_override_check_job
from jobs_pipeline.jobs.promo_cleanup import promo_cleanup_job
from jobs_pipeline.jobs.tier_expiration import tier_expiration_job
from jobs_pipeline.jobs.trial_reminder import trial_reminder_job
from jobs_pipeline.operator_tools.undo import undo_run_job
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.resources.mail import Mailer
from jobs_pipeline.storage.api_tokens import (
    authenticate,
    caller_of_token,
    issue_token,
    revoke_token,
)
from jobs_pipeline.storage.app_database_setup import run_script
from jobs_pipeline.storage.app_tables import (
    global_config,
    promo_codes,
    promo_redemptions,
    user_discipline_stats,
    users,
)
from jobs_pipeline.storage.embedded import EmbeddedPostgres
from jobs_pipeline.storage.engine import create_app_engine
from jobs_pipeline.storage.ledger import changes_to_user
from jobs_pipeline.storage.project_tables import change_ledger, email_outbox
from jobs_pipeline.storage.ui_actions import (
    actions_on_run,
    finish_action,
    recent_actions,
    record_action,
    record_refusal,
)
from jobs_pipeline.storage.ui_sessions import caller_of_session, end_session, start_session
from jobs_pipeline.storage.users import role_of_email
from jobs_pipeline_tests.support.app_data import (
    add_expired_user,
    add_promo_code,
    add_redemption,
    add_user,
    db_now,
    set_override,
    table_rows,
    user_row,
)
from jobs_pipeline_tests.support.journal_data import expected_stats, make_journals, stored_stats
from jobs_pipeline_tests.support.postgres import admin_connection
from jobs_pipeline_tests.support.receivers import SmtpServer
from jobs_pipeline_tests.support.running import failure_message, job_result

ROLE = "jobs_runner"  # the name least_privilege.sql grants to
PASSWORD = "runner-Pa55-4be1"


@pytest.fixture
def runner_url(postgres: EmbeddedPostgres, engine: Engine, app_db_url: str) -> Iterator[str]:
    """The test's database as `jobs_runner`, granted least_privilege.sql and nothing else.

    pgserver trusts local connections, so the password is not checked: the privileges
    are the point. The role is the cluster's, so it is dropped once the test is over.
    """
    role = sql.Identifier(ROLE)
    with admin_connection(postgres) as admin:
        if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone() is None:
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(PASSWORD))
            )
    with engine.begin() as connection:
        run_script(connection, "least_privilege.sql")
    url = make_url(app_db_url).set(username=ROLE, password=PASSWORD)
    yield url.render_as_string(hide_password=False)
    database = make_url(app_db_url).database
    with psycopg.connect(
        host=str(postgres.pgdata), user="postgres", dbname=database, autocommit=True
    ) as owner:
        owner.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (ROLE,)
        )
        owner.execute(sql.SQL("DROP OWNED BY {}").format(role))
        owner.execute(sql.SQL("DROP ROLE {}").format(role))


@pytest.fixture
def runner_db(runner_url: str) -> AppDatabase:
    return AppDatabase(url=runner_url, retry_delay_seconds=0.1, max_retries=1)


@pytest.fixture
def runner_engine(runner_url: str) -> Iterator[Engine]:
    engine = create_app_engine(runner_url)
    yield engine
    engine.dispose()


def run(
    job: dg.JobDefinition,
    db: AppDatabase,
    instance: dg.DagsterInstance,
    mailer: Mailer | None = None,
    *,
    tags: dict[str, str] | None = None,
    run_config: dict[str, Any] | None = None,
) -> dg.ExecuteInProcessResult:
    resources: dict[str, Any] = {"db": db}
    if mailer is not None:
        resources["mailer"] = mailer
    execution = job.execute_in_process(
        run_config=run_config if run_config is not None else op_config_for(job),
        resources=resources,
        instance=instance,
        tags=tags,
        raise_on_error=False,
    )
    assert execution.success, f"{job.name} failed as {ROLE}: {failure_message(execution)}"
    return execution


def undo(db: AppDatabase, instance: dg.DagsterInstance, run_id: str) -> dg.ExecuteInProcessResult:
    config = {"ops": {"undo_changes": {"config": {"run_id": run_id}}}}
    return run(undo_run_job, db, instance, run_config=config)


# -- the grants ------------------------------------------------------------------------------

# Table privileges (whole-table grants) the file gives; column grants are listed apart.
TABLE_PRIVILEGES = {
    "public.users": {"SELECT"},
    "public.global_config": {"SELECT", "DELETE", "INSERT"},
    "public.promo_codes": {"SELECT"},
    "public.promo_redemptions": {"SELECT", "DELETE", "INSERT"},
    "public.targets": {"SELECT"},
    "public.aims": {"SELECT"},
    "public.shots": {"SELECT"},
    "public.user_discipline_stats": {"SELECT", "INSERT", "UPDATE"},
    "jobs_pipeline.email_outbox": {"SELECT", "INSERT", "UPDATE"},
    "jobs_pipeline.change_ledger": {"SELECT", "INSERT", "DELETE"},
    "jobs_pipeline.api_tokens": {"SELECT", "INSERT", "UPDATE"},
    "jobs_pipeline.ui_actions": {"SELECT", "INSERT", "UPDATE"},
    "jobs_pipeline.ui_sessions": {"SELECT", "INSERT", "UPDATE"},
    "jobs_pipeline.alembic_version": {"SELECT"},
}
COLUMN_UPDATES = {
    "public.users": {"tier", "tier_source", "tier_expires_at", "updated_at"},
    "public.promo_codes": {"is_active"},
    # Never used to update: SELECT ... FOR UPDATE SKIP LOCKED needs UPDATE on some column.
    "public.promo_redemptions": {"id"},
}


def test_the_role_holds_exactly_the_grants_of_the_file(runner_url, engine):
    with engine.connect() as c:
        tables = c.exec_driver_sql(
            "SELECT table_schema || '.' || table_name, privilege_type"
            " FROM information_schema.role_table_grants WHERE grantee = %(role)s",
            {"role": ROLE},
        ).all()
        columns = c.exec_driver_sql(
            "SELECT table_schema || '.' || table_name, column_name"
            " FROM information_schema.column_privileges"
            " WHERE grantee = %(role)s AND privilege_type = 'UPDATE'",
            {"role": ROLE},
        ).all()
        schemas = c.exec_driver_sql(
            "SELECT nspname, has_schema_privilege(%(role)s, oid, 'USAGE'),"
            " has_schema_privilege(%(role)s, oid, 'CREATE') FROM pg_namespace"
            " WHERE nspname IN ('public', 'jobs_pipeline')",
            {"role": ROLE},
        ).all()
        sequences = c.exec_driver_sql(
            "SELECT relname, has_sequence_privilege(%(role)s, oid, 'USAGE, SELECT, UPDATE')"
            " FROM pg_class WHERE relkind = 'S'",
            {"role": ROLE},
        ).all()
    granted: dict[str, set[str]] = {}
    for table, privilege in tables:
        granted.setdefault(table, set()).add(privilege)
    assert granted == TABLE_PRIVILEGES
    updatable: dict[str, set[str]] = {}
    for table, column in columns:
        updatable.setdefault(table, set()).add(column)
    # A whole-table UPDATE shows up per column too.
    for table, privileges in TABLE_PRIVILEGES.items():
        if "UPDATE" in privileges:
            updatable.pop(table)
    assert updatable == COLUMN_UPDATES
    assert sorted(schemas) == [("jobs_pipeline", True, False), ("public", True, False)]
    # Identity columns need no sequence privilege: the jobs insert without any.
    assert sequences and not any(granted for _name, granted in sequences)


# -- every job, as the role ------------------------------------------------------------------


@pytest.fixture
def mailer(smtp_server: SmtpServer) -> Mailer:
    return Mailer(host=smtp_server.host, port=smtp_server.port, sender="journal@example.com")


def test_every_job_does_its_work_as_the_role(engine, runner_db, instance, mailer, smtp_server):
    now = db_now(engine)
    journal_users = make_journals(engine, seed=41, user_count=30)
    with engine.begin() as c:
        expired = [add_expired_user(c, now, tier) for tier in ("premium", "pro", "premium")]
        keeps = add_user(c, tier="pro", tier_source="purchase", tier_expires_at=now + timedelta(1))
        for _ in range(20):  # paying users, so three downgrades stay under the guard's share
            add_user(c, tier="premium", tier_source="purchase")
        trial = add_user(
            c,
            email="trial-ends-soon@example.com",
            tier="premium",
            tier_source="trial",
            trial_ends_at=now + timedelta(days=2),
        )
        set_override(c, {"tier": "pro", "expires_at": "2020-01-01T00:00:00Z"})
        old_code = add_promo_code(c, "EXPIRED-1", valid_until=now - timedelta(days=3))
        current_code = add_promo_code(c, "CURRENT-1", valid_until=now + timedelta(days=30))
        for _ in range(3):
            add_promo_code(c, f"OPEN-{uuid.uuid4().hex[:6]}")  # the guard's denominator
        old_redemptions = [
            add_redemption(c, current_code, journal_users[n], now - timedelta(days=400))
            for n in range(2)
        ]
        for n in range(2, 8):
            add_redemption(c, old_code, journal_users[n], now - timedelta(days=10))
    rollup_job = defs.resolve_job_def("discipline_stats_rollup")
    jobs = [
        tier_expiration_job,
        global_override_check_job,
        promo_cleanup_job,
        rollup_job,
        email_delivery_job,
        trial_reminder_job,
    ]

    for job in jobs:  # dry runs first: their statements differ, and must pass too
        dry = run(
            job,
            runner_db,
            instance,
            mailer,
            run_config=op_config_for(job, dry_run=True),
            tags=ALL_SHARDS_TAGS if job is rollup_job else None,
        )
        assert job_result(dry)["dryRun"] is True
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(change_ledger)).scalar() == 0

    downgraded = job_result(run(tier_expiration_job, runner_db, instance))
    assert (downgraded["processed"], downgraded["failed"]) == (3, 0)
    assert {user_row(engine, u)["tier"] for u in expired} == {"free"}
    assert user_row(engine, keeps)["tier"] == "pro"

    cleared = job_result(run(global_override_check_job, runner_db, instance))
    assert cleared["action"] == "cleared"
    assert table_rows(engine, global_config) == []

    cleaned = job_result(run(promo_cleanup_job, runner_db, instance))
    assert (cleaned["codesDeactivated"], cleaned["redemptionsDeleted"]) == (1, 2)
    with engine.connect() as c:
        active = dict(c.execute(select(promo_codes.c.id, promo_codes.c.is_active)).all())
        left = set(c.execute(select(promo_redemptions.c.id)).scalars())
    assert active[old_code] is False and active[current_code] is True
    assert left.isdisjoint(old_redemptions) and len(left) == 6

    rolled = run(rollup_job, runner_db, instance, tags=ALL_SHARDS_TAGS)
    assert job_result(rolled)["usersUpdated"] == 30 + 3 + 1 + 20 + 1
    assert all(check.passed for check in rolled.get_asset_check_evaluations())
    assert stored_stats(engine).equals(expected_stats(engine))

    delivered = job_result(run(email_delivery_job, runner_db, instance, mailer))
    assert delivered["sent"] == 3  # the three tier-expired emails the downgrade queued

    reminded = job_result(run(trial_reminder_job, runner_db, instance, mailer))
    assert (reminded["queued3d"], reminded["queued1d"], reminded["sent"]) == (1, 0, 1)
    (reminder,) = smtp_server.mailbox.to("trial-ends-soon@example.com")
    assert reminder["Subject"]
    with engine.connect() as c:
        statuses = c.execute(select(email_outbox.c.status)).scalars().all()
        stats_rows = c.execute(select(func.count()).select_from(user_discipline_stats)).scalar()
    assert statuses == ["sent"] * 4 and stats_rows == 55
    assert user_row(engine, trial)["tier"] == "premium"


def comparable(engine: Engine, table: Table) -> list[dict[str, Any]]:
    """A table's rows, without `updated_at` (an undo sets it to its own time)."""
    return [
        {k: v for k, v in row.items() if k != "updated_at"} for row in table_rows(engine, table)
    ]


@pytest.mark.parametrize(
    ("job", "tables"),
    [
        pytest.param(tier_expiration_job, (users,), id="tier_expiration"),
        pytest.param(global_override_check_job, (global_config,), id="global_override_check"),
        pytest.param(
            promo_cleanup_job,
            (promo_codes, promo_redemptions),
            id="promo_cleanup",
        ),
    ],
)
def test_an_undo_runs_as_the_role(job, tables, engine, runner_db, instance):
    now = db_now(engine)
    with engine.begin() as c:
        add_expired_user(c, now, "pro", tier_source="promo")
        for _ in range(10):
            add_user(c, tier="premium", tier_source="purchase")
        set_override(c, {"tier": "premium", "expires_at": "2021-06-01T00:00:00Z"})
        redeemer = add_user(c)
        code = add_promo_code(c, "GONE-1", valid_until=now - timedelta(days=1))
        for _ in range(3):
            add_promo_code(c, f"KEEP-{uuid.uuid4().hex[:6]}")
        add_redemption(c, code, redeemer, now - timedelta(days=500))
        for _ in range(3):
            add_redemption(c, code, redeemer, now - timedelta(days=5))
    before = {table.name: comparable(engine, table) for table in tables}
    changed = run(job, runner_db, instance)
    with engine.connect() as c:
        recorded = c.execute(
            select(func.count())
            .select_from(change_ledger)
            .where(change_ledger.c.run_id == changed.run_id)
        ).scalar_one()
    assert recorded == len(tables)  # one row of each table changed
    assert {table.name: comparable(engine, table) for table in tables} != before

    undone = undo(runner_db, instance, changed.run_id)

    assert (job_result(undone)["restored"], job_result(undone)["leftAlone"]) == (recorded, 0)
    assert {table.name: comparable(engine, table) for table in tables} == before


def test_why_admin_api_tokens_and_the_door_work_as_the_role(engine, runner_engine):
    with engine.begin() as c:
        admin = add_user(c, email="root@example.com", role="admin")

    with runner_engine.begin() as c:
        token_id, token = issue_token(c, "root@example.com")
    with runner_engine.begin() as c:
        caller = authenticate(c, token)
    assert caller is not None and caller.user_id == admin and caller.is_admin
    with runner_engine.begin() as c:  # what the door does at each request, and records
        assert caller_of_token(c, token_id) == caller
        assert role_of_email(c, "ROOT@example.com") == ("root@example.com", "admin")
        action = record_action(c, "root@example.com", "stopSensor", "stopSensor", {})
        finish_action(c, action, run_ids=["r1"], backfill_id=None, outcome="ok")
        assert [a.outcome for a in actions_on_run(c, "r1")] == ["ok"]
        refused = record_refusal(c, "root@example.com", "POST /graphql", "", {}, "why")
        assert [a.action_id for a in recent_actions(c, 5)] == [action, refused]
        session = start_session(c, token_id)
        assert caller_of_session(c, session, timedelta(hours=8)) == caller
        assert end_session(c, session)
        assert caller_of_session(c, session, timedelta(hours=8)) is None
        still_open = start_session(c, token_id)
    with runner_engine.begin() as c:
        assert revoke_token(c, token_id)
    with runner_engine.begin() as c:
        assert authenticate(c, token) is None
        assert caller_of_session(c, still_open, timedelta(hours=8)) is None
        assert changes_to_user(c, str(admin)) == []


# -- what the role cannot do -----------------------------------------------------------------

FORBIDDEN = [
    "ALTER TABLE users ADD COLUMN x int",
    "DROP TABLE shots",
    "CREATE TABLE public.t (x int)",
    "TRUNCATE promo_redemptions",
    "DELETE FROM users",
    # Writes the jobs never make: promoting a user to admin, changing what a code grants.
    "UPDATE users SET role = 'admin'",
    "UPDATE users SET email = 'x@example.com'",
    "INSERT INTO users (email) VALUES ('mallory@example.com')",
    "UPDATE promo_codes SET tier = 'pro'",
    "DELETE FROM promo_codes",
    "DELETE FROM shots",
    "UPDATE global_config SET value = '{}'",
    # The project's schema is the migrations' to change.
    "CREATE TABLE jobs_pipeline.t (x int)",
    "ALTER TABLE jobs_pipeline.email_outbox ADD COLUMN x int",
    "DROP TABLE jobs_pipeline.change_ledger",
    "UPDATE jobs_pipeline.alembic_version SET version_num = '0000'",
    "DROP SCHEMA jobs_pipeline CASCADE",
    "CREATE SCHEMA mine",
]


@pytest.mark.parametrize("statement", FORBIDDEN)
def test_the_role_cannot_do_it(runner_url, statement):
    with (
        psycopg.connect(runner_url, autocommit=True) as connection,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        connection.execute(statement)


def test_through_sqlalchemy_the_refusal_is_a_permission_error(runner_engine):
    with pytest.raises(exc.ProgrammingError) as refused, runner_engine.begin() as c:
        c.exec_driver_sql("DROP TABLE shots")
    assert isinstance(refused.value.orig, psycopg.errors.InsufficientPrivilege)
