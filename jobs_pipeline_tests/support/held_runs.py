"""Tier-expiration runs on the deployed topology, held mid-write for a fault to strike.

A run over `EXPIRED_USERS` users in batches of `BATCH` commits its first batch, then waits
at a gate (a trigger) until the test opens it; `each_user_changed_once` reads whether,
whatever happened meanwhile, every user was downgraded exactly once.
"""

from typing import Any

from sqlalchemy import Engine, Text, cast, func, select, text

from jobs_pipeline.definitions import defs
from jobs_pipeline.interfaces.launching.plans import op_config_for
from jobs_pipeline.storage.app_tables import users
from jobs_pipeline.storage.project_tables import change_ledger, email_outbox
from jobs_pipeline_tests.support.deployed_runs import LAUNCH_RUN, execution_params
from jobs_pipeline_tests.support.deployment import Deployment

START_DEADLINE_S = 120

EXPIRED_USERS = 30
BATCH = 5  # users per transaction: the gate holds the second batch, after the first commits
# What `each_user_changed_once` reads when every expired user was downgraded exactly once.
EACH_USER_ONCE = {
    "downgraded": EXPIRED_USERS,
    "ledger rows": EXPIRED_USERS,
    "users in the ledger": EXPIRED_USERS,
    "emails": EXPIRED_USERS,
    "users emailed": EXPIRED_USERS,
}


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


def gate_after_first_batch(engine: Engine) -> None:
    """Downgrades pass until the first batch is committed (its ledger rows are there), then
    wait at the gate: the run is killed with one batch done and the next one in flight.
    """
    with engine.begin() as connection:
        connection.execute(
            text(
                f"""
                CREATE TABLE test_gate (closed boolean NOT NULL);
                INSERT INTO test_gate VALUES (true);
                CREATE FUNCTION gate_users() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    WHILE (SELECT bool_or(closed) FROM test_gate)
                      AND (SELECT count(*) FROM jobs_pipeline.change_ledger) >= {BATCH}
                    LOOP
                        PERFORM pg_sleep(0.2);
                    END LOOP;
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
