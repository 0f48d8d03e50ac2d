"""Tier-expiration runs on the deployed topology, held mid-write for a fault to strike.

A run over `EXPIRED_USERS` users in batches of `BATCH` commits its first batch, then waits
at a gate (a trigger) until the test opens it; `each_user_changed_once` reads whether,
whatever happened meanwhile, every user was downgraded exactly once.
"""

import re
from typing import Any

from sqlalchemy import Engine, Text, cast, func, select, text

from jobs_pipeline.definitions import defs
from jobs_pipeline.interfaces.launching.plans import op_config_for
from jobs_pipeline.resources.database import WRITER_LOCK_NAMESPACE
from jobs_pipeline.storage.app_tables import users
from jobs_pipeline.storage.project_tables import change_ledger, email_outbox
from jobs_pipeline_tests.support.deployed_runs import (
    ENDED,
    LAUNCH_RUN,
    POOL,
    execution_params,
    failure_reason,
    run_record,
    wait_for,
    wait_for_status,
)
from jobs_pipeline_tests.support.deployment import Deployment
from jobs_pipeline_tests.support.receivers import WebhookServer

START_DEADLINE_S = 120
# The promise to operators: the next run has done the work within 3 minutes of the fault.
RECOVERY_DEADLINE_S = 180
# The failure sensor ticks every 30 s; the redelivery sensor every 60 s.
ALERT_DEADLINE_S = 120
WRITES_USERS = "writes_users"

EXPIRED_USERS = 30
BATCH = 5  # users per transaction: the gate holds the second batch, after the first commits
# A run at production's scale, for the tests of where runs execute (a fleet, containers).
MANY_USERS = 300_000
MANY_BATCH = 10_000
# The run config that lets one run downgrade them all (the guard's caps are for production).
ALL_OF_THEM: dict[str, Any] = {
    "batch_size": MANY_BATCH,
    "max_downgrades": MANY_USERS,
    "max_downgrade_share": 1.0,
}


def each_user_once(count: int) -> dict[str, int]:
    """What `each_user_changed_once` reads when `count` expired users were each downgraded
    exactly once.
    """
    return {
        "downgraded": count,
        "ledger rows": count,
        "users in the ledger": count,
        "emails": count,
        "users emailed": count,
    }


EACH_USER_ONCE = each_user_once(EXPIRED_USERS)


def launch(
    deployment: Deployment, job_name: str, *, tags: dict[str, str] | None = None, **op_config: Any
) -> str:
    """The Launchpad's "Launch Run", with op config: queued, then started by the daemon."""
    run_config = op_config_for(defs.resolve_job_def(job_name), **op_config) if op_config else None
    tag_list = [{"key": key, "value": value} for key, value in (tags or {}).items()]
    params = execution_params(job_name, tag_list, run_config)
    result = deployment.graphql(LAUNCH_RUN, executionParams=params)["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def step_process(deployment: Deployment, run_id: str) -> int:
    """The pid Dagster names in the run's "Executing steps in process (pid: N)" event."""

    def named() -> int | None:
        for event in run_record(deployment, run_id)["events"]:
            found = re.search(r"Executing steps in process \(pid: (\d+)\)", event["message"])
            if found:
                return int(found.group(1))
        return None

    return wait_for(deployment, f"run {run_id}'s step process named", named, START_DEADLINE_S)


def add_expired_users(engine: Engine, count: int) -> None:
    """`count` users whose paid tier expired an hour ago, in one statement."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (email, role, tier, tier_source, tier_expires_at)"
                " SELECT 'expired' || n || '@example.com', 'user', 'premium', 'purchase',"
                " now() - interval '1 hour' FROM generate_series(1, :count) AS n"
            ),
            {"count": count},
        )


def gate_after_first_batch(engine: Engine, batch: int = BATCH) -> None:
    """Downgrades pass until the first batch is committed (its ledger rows are there), then
    wait at the gate: the run is killed with one batch done and the next one in flight.
    Once the gate is open, a row costs one read of the one-row gate table.
    """
    with engine.begin() as connection:
        connection.execute(
            text(
                f"""
                CREATE TABLE test_gate (closed boolean NOT NULL);
                INSERT INTO test_gate VALUES (true);
                CREATE FUNCTION gate_users() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF (SELECT bool_or(closed) FROM test_gate) THEN
                        WHILE (SELECT bool_or(closed) FROM test_gate)
                          AND (SELECT count(*) FROM jobs_pipeline.change_ledger) >= {batch}
                        LOOP
                            PERFORM pg_sleep(0.2);
                        END LOOP;
                    END IF;
                    RETURN NEW;
                END $$;
                CREATE TRIGGER gate_users BEFORE UPDATE ON users
                    FOR EACH ROW EXECUTE FUNCTION gate_users();
                """
            )
        )


def held_at_gate(engine: Engine) -> bool:
    """Whether a write waits in the gate's loop now (its statement in flight, sleeping)."""
    with engine.connect() as connection:
        sleeping = connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event = 'PgSleep'"
            )
        ).scalar_one()
    return bool(sleeping)


def ledger_rows(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(change_ledger)).scalar_one()


def each_user_changed_once(engine: Engine) -> dict[str, int]:
    """Users downgraded (free now, by a recorded change), ledger rows, distinct users in
    the ledger, tier-expired emails queued, distinct users emailed.
    """
    with engine.connect() as connection:
        ledger = connection.execute(
            select(func.count(), func.count(change_ledger.c.row_key.distinct())).where(
                change_ledger.c.table_name == "users"
            )
        ).one()
        emails = connection.execute(
            select(func.count(), func.count(email_outbox.c.user_id.distinct())).where(
                email_outbox.c.template == "tier-expired"
            )
        ).one()
        in_ledger = select(change_ledger.c.row_key).where(change_ledger.c.table_name == "users")
        downgraded = connection.execute(
            select(func.count())
            .select_from(users)
            .where(users.c.tier == "free", cast(users.c.id, Text).in_(in_ledger))
        ).scalar_one()
    return {
        "downgraded": downgraded,
        "ledger rows": ledger[0],
        "users in the ledger": ledger[1],
        "emails": emails[0],
        "users emailed": emails[1],
    }


# -- what the dead run left behind -------------------------------------------------------------


def still_paying(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(
            select(func.count()).select_from(users).where(users.c.tier != "free")
        ).scalar_one()


def writer_locks_held(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :namespace"
            ),
            {"namespace": WRITER_LOCK_NAMESPACE},
        ).scalar_one()


def slots_claimed(deployment: Deployment, pool: str) -> list[dict[str, str]]:
    return deployment.graphql(POOL, pool=pool)["instance"]["concurrencyLimit"]["claimedSlots"]


def failure_alerts(webhook: WebhookServer, run_id: str) -> list[dict[str, Any]]:
    return [post for post in webhook.posts if post["run_id"] == run_id and post["kind"] == "failed"]


def assert_alerted_once(
    deployment: Deployment, webhook: WebhookServer, run_id: str
) -> dict[str, Any]:
    wait_for(
        deployment,
        f"the dead run {run_id} alerted",
        lambda: failure_alerts(webhook, run_id),
        ALERT_DEADLINE_S,
    )
    alerts = failure_alerts(webhook, run_id)
    assert len(alerts) == 1, alerts
    return alerts[0]


def the_next_run_did_the_rest(
    deployment: Deployment,
    engine: Engine,
    webhook: WebhookServer,
    dead_id: str,
    next_id: str,
    users: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """After a run's worker died mid-write: the next run succeeded within 3 minutes, the
    dead run FAILURE, each of `users` downgraded once, no slot or writer lock left held,
    the dead run alerted once. Returns both runs' records (dead, next).
    """
    finished = wait_for_status(deployment, next_id, ENDED, RECOVERY_DEADLINE_S)
    assert finished["status"] == "SUCCESS", (failure_reason(finished), deployment.process_logs())
    dead = run_record(deployment, dead_id)
    assert dead["status"] == "FAILURE", (dead["status"], deployment.process_logs())
    assert each_user_changed_once(engine) == each_user_once(users)
    assert still_paying(engine) == 0
    assert slots_claimed(deployment, WRITES_USERS) == []
    assert writer_locks_held(engine) == 0
    assert_alerted_once(deployment, webhook, dead_id)
    return dead, finished
