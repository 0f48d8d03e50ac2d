"""Undo restores what a run changed, where nothing changed since; `why` explains a user."""

import json
import time
from datetime import timedelta

from sqlalchemy import func, select, text, update

from jobs_pipeline.jobs.global_override_check import global_override_check_job
from jobs_pipeline.jobs.promo_cleanup import promo_cleanup_job
from jobs_pipeline.jobs.tier_expiration import tier_expiration_job
from jobs_pipeline.operator_tools.undo import undo_run_job
from jobs_pipeline.storage.app_tables import global_config, promo_codes, promo_redemptions, users
from jobs_pipeline.storage.project_tables import change_ledger
from jobs_pipeline_tests.support.app_data import (
    add_expired_user,
    add_promo_code,
    add_redemption,
    add_user,
    db_now,
    set_override,
    slow_trigger,
    table_rows,
    user_row,
)
from jobs_pipeline_tests.support.deadlines import deadline
from jobs_pipeline_tests.support.processes import cli_environment, kill, run_cli, start_job_process
from jobs_pipeline_tests.support.running import failure_message, job_result, log_messages, run_job


def undo(db, instance, run_id: str, **config):
    return undo_run_job.execute_in_process(
        run_config={"ops": {"undo_changes": {"config": {"run_id": run_id, **config}}}},
        resources={"db": db},
        instance=instance,
        raise_on_error=False,
    )


def test_undo_restores_downgrades_and_leaves_a_renewed_user_alone(engine, db, instance):
    now = db_now(engine)
    with engine.begin() as c:
        ids = [add_expired_user(c, now, "pro", tier_source="promo") for _ in range(4)]
    before = {u: user_row(engine, u) for u in ids}
    downgrade = run_job(tier_expiration_job, db, instance)
    renewed = ids[0]
    with engine.begin() as c:  # the app renews one user after the downgrade
        c.execute(
            update(users)
            .where(users.c.id == renewed)
            .values(
                tier="premium",
                tier_source="purchase",
                tier_expires_at=now + timedelta(days=30),
                updated_at=func.now(),
            )
        )
    renewed_row = user_row(engine, renewed)

    dry = undo(db, instance, downgrade.run_id, dry_run=True)
    assert (job_result(dry)["restored"], job_result(dry)["leftAlone"]) == (3, 1)
    assert user_row(engine, ids[1])["tier"] == "free"

    undone = undo(db, instance, downgrade.run_id)

    assert (job_result(undone)["restored"], job_result(undone)["leftAlone"]) == (3, 1)
    assert user_row(engine, renewed) == renewed_row
    for user_id in ids[1:]:
        row = user_row(engine, user_id)
        for column in ("tier", "tier_source", "tier_expires_at"):
            assert row[column] == before[user_id][column]
    changed = "the app or a later run changed it since this run"
    (left,) = job_result(undone)["leftAloneRows"]
    assert left == {"table": "users", "key": str(renewed), "email": left["email"], "why": changed}
    assert left["email"] == user_row(engine, renewed)["email"]
    assert any(
        f"Left alone: users {renewed} ({left['email']}): {changed}" in m
        for m in log_messages(instance, undone)
    )

    again = undo(db, instance, downgrade.run_id)
    assert (job_result(again)["restored"], job_result(again)["leftAlone"]) == (0, 4)
    whys = sorted(row["why"] for row in job_result(again)["leftAloneRows"])
    assert whys == ["it holds its old values already (undone before)"] * 3 + [changed]
    with engine.connect() as c:
        recorded = c.execute(
            select(func.count())
            .select_from(change_ledger)
            .where(change_ledger.c.run_id == undone.run_id)
        ).scalar()
    assert recorded == 3


def test_undo_puts_back_deleted_redemptions_codes_and_an_override(engine, db, instance):
    now = db_now(engine)
    with engine.begin() as c:
        user = add_user(c)
        code = add_promo_code(c, "GONE", valid_until=now - timedelta(days=2))
        for days in (400, 500):
            add_redemption(c, code, user, now - timedelta(days=days))
        set_override(c, {"tier": "pro", "expires_at": "2020-01-01T00:00:00Z"})
    redemptions, codes = table_rows(engine, promo_redemptions), table_rows(engine, promo_codes)
    override = table_rows(engine, global_config)
    cleanup = run_job(promo_cleanup_job, db, instance)
    cleared = run_job(global_override_check_job, db, instance)
    assert table_rows(engine, promo_redemptions) == [] and table_rows(engine, global_config) == []

    assert job_result(undo(db, instance, cleanup.run_id))["restored"] == 3
    assert job_result(undo(db, instance, cleared.run_id))["restored"] == 1

    assert table_rows(engine, promo_redemptions) == redemptions
    assert table_rows(engine, promo_codes) == codes
    assert table_rows(engine, global_config) == override


def test_an_undo_can_itself_be_undone(engine, db, instance):
    with engine.begin() as c:
        set_override(c, {"tier": "pro", "expires_at": "2020-01-01T00:00:00Z"})
    cleared = run_job(global_override_check_job, db, instance)
    restore = undo(db, instance, cleared.run_id)
    assert len(table_rows(engine, global_config)) == 1

    assert job_result(undo(db, instance, restore.run_id))["restored"] == 1
    assert table_rows(engine, global_config) == []


def test_undo_refuses_a_run_with_nothing_recorded(engine, db, instance):
    execution = undo(db, instance, "no-such-run")
    assert not execution.success
    assert "has no changes in the ledger" in failure_message(execution)


def test_why_explains_every_change_to_a_user(engine, db, instance, app_db_url, tmp_path):
    now = db_now(engine)
    with engine.begin() as c:
        user_id = add_expired_user(c, now, "pro", email="why@example.com")
    run = run_job(tier_expiration_job, db, instance)
    env = cli_environment(tmp_path / "state", DATABASE_URL=app_db_url)

    why = run_cli("why", "--user", "WHY@example.com", env=env, cwd=tmp_path)

    assert why.returncode == 0, why.stderr
    lines = why.stdout.splitlines()
    assert f"tier_expiration run {run.run_id}  users {user_id}" in lines[0]
    assert "tier: pro -> free" in lines[1] and "tier_source: purchase -> default" in lines[1]
    assert lines[2].startswith("    because tier_expires_at ") and " < run time " in lines[2]

    nobody = run_cli("why", "--user", "ghost@example.com", env=env, cwd=tmp_path)
    assert nobody.returncode == 2 and "no user with id or email" in nobody.stderr


def test_the_undo_command_is_a_recorded_run(engine, db, instance, app_db_url, tmp_path):
    now = db_now(engine)
    with engine.begin() as c:
        user_id = add_expired_user(c, now)
    run = run_job(tier_expiration_job, db, instance)
    env = cli_environment(tmp_path / "state", DATABASE_URL=app_db_url)

    undone = run_cli("undo", run.run_id, env=env, cwd=tmp_path)

    assert undone.returncode == 0, undone.stderr
    assert undone.stdout.splitlines()[-1].startswith("[undo-run] Result: {")
    assert '"restored": 1' in undone.stdout
    assert user_row(engine, user_id)["tier"] == "premium"
    undo_run_id = json.loads(undone.stdout.splitlines()[-1].split("Result: ", 1)[1])["runId"]
    assert f"Run {undo_run_id}" in undone.stderr

    # Again: the row is left alone, and stdout says whose it is and why, before the result.
    again = run_cli("undo", run.run_id, env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    email = user_row(engine, user_id)["email"]
    assert again.stdout.splitlines() == [
        f"[undo-run] Left alone: users {user_id} ({email}):"
        " it holds its old values already (undone before)",
        again.stdout.splitlines()[-1],
    ]

    # `why --run` takes the id `undo` (or `run`) printed.
    why = run_cli("why", "--run", undo_run_id, env=env, cwd=tmp_path)
    assert why.returncode == 0, why.stderr
    assert f"undo_run run {undo_run_id}  users {user_id}" in why.stdout
    assert "tier: free -> premium" in why.stdout


SLOW_DOWNGRADES = slow_trigger("users", "BEFORE UPDATE", 0.05)


def test_sigkill_midway_leaves_the_ledger_and_the_tables_agreeing(engine, app_db_url):
    now = db_now(engine)
    with engine.begin() as c:
        for _ in range(60):
            add_expired_user(c, now)
        c.execute(text(SLOW_DOWNGRADES))
    process = start_job_process(app_db_url, "tier_expiration", batch_size=3, allow_large=True)

    def free_users() -> set[str]:
        with engine.connect() as c:
            return {
                str(u)
                for u in c.execute(select(users.c.id).where(users.c.tier == "free")).scalars()
            }

    deadline_at = time.monotonic() + deadline(60)
    while not free_users() and time.monotonic() < deadline_at:
        time.sleep(0.05)
    kill(process, engine)

    downgraded = free_users()
    assert 0 < len(downgraded) < 60
    with engine.connect() as c:
        recorded = set(c.execute(select(change_ledger.c.row_key)).scalars())
    assert recorded == downgraded
