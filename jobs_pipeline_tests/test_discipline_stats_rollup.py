import uuid

import dagster as dg
import pytest
from sqlalchemy import func, insert, select, update

from jobs_pipeline.app_tables import shots, user_discipline_stats, users
from jobs_pipeline.database import AppDatabase
from jobs_pipeline.definitions import defs
from jobs_pipeline.jobs.discipline_stats_rollup import (
    ALL_SHARDS_TAGS,
    SHARD_COUNT,
    STAT_COLUMNS,
    Scope,
    shard_of,
    user_shard,
    user_shards,
)
from jobs_pipeline.launch import failure_message, op_config_for
from jobs_pipeline_tests.app_data import add_user, db_now
from jobs_pipeline_tests.journal_data import (
    as_records,
    expected_stats,
    make_journals,
    stored_stats,
)
from jobs_pipeline_tests.running import job_result, log_messages

rollup_job = defs.resolve_job_def("discipline_stats_rollup")


def run_rollup(
    db: AppDatabase,
    instance: dg.DagsterInstance,
    *,
    partition_key: str | None = None,
    tags: dict[str, str] | None = None,
    **config,
) -> dg.ExecuteInProcessResult:
    return rollup_job.execute_in_process(
        run_config=op_config_for(rollup_job, **config),
        resources={"db": db},
        instance=instance,
        partition_key=partition_key,
        tags=tags if tags is not None else (None if partition_key else ALL_SHARDS_TAGS),
        raise_on_error=False,
    )


def stats_user_ids(engine) -> set[uuid.UUID]:
    with engine.connect() as c:
        return set(c.execute(select(user_discipline_stats.c.user_id)).scalars())


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_matches_an_oracle_computed_from_the_raw_tables(engine, db, instance, seed):
    make_journals(engine, seed)

    execution = run_rollup(db, instance)

    assert execution.success
    assert as_records(stored_stats(engine)) == as_records(expected_stats(engine))
    result = job_result(execution)
    assert result["usersUpdated"] == 60
    with engine.connect() as c:
        assert result["shotsCounted"] == c.execute(select(func.count()).select_from(shots)).scalar()


def test_one_run_materializes_every_shard_and_passes_its_checks(engine, db, instance):
    make_journals(engine, seed=7)

    execution = run_rollup(db, instance)

    materializations = execution.get_asset_materialization_events()
    assert sorted(str(m.partition) for m in materializations) == user_shards.get_partition_keys()
    metadata = materializations[0].step_materialization_data.materialization.metadata
    assert {"usersUpdated", "shotsCounted", "seconds"} <= set(metadata)
    checks = execution.get_asset_check_evaluations()
    assert {c.check_name for c in checks} == {
        "honored_plus_ignored_within_total",
        "abort_counts_within_targets",
        "every_user_has_a_row",
        "freshness_check",
    }
    assert all(c.passed for c in checks)
    messages = log_messages(instance, execution)
    assert any(
        m.startswith("[discipline-stats-rollup] Updated stats for 60 users") for m in messages
    )
    assert any(m.startswith("[discipline-stats-rollup] Result: {") for m in messages)


def test_the_event_count_does_not_grow_with_users(engine, db, instance):
    make_journals(engine, seed=11, user_count=10)
    small = run_rollup(db, instance)
    make_journals(engine, seed=12, user_count=300)
    large = run_rollup(db, instance)

    assert len(instance.all_logs(small.run_id)) == len(instance.all_logs(large.run_id))


def test_every_user_lies_in_exactly_one_shard_and_sql_agrees_with_python(engine):
    make_journals(engine, seed=5, user_count=200)
    with engine.connect() as c:
        rows = c.execute(select(users.c.id, user_shard(users.c.id))).all()
        per_shard = {
            key: set(
                c.execute(select(users.c.id).where(Scope((key,)).covers(users.c.id))).scalars()
            )
            for key in user_shards.get_partition_keys()
        }
    assert len(user_shards.get_partition_keys()) == SHARD_COUNT
    assert all(shard_of(user_id) == f"{shard:02d}" for user_id, shard in rows)
    assert sum(len(ids) for ids in per_shard.values()) == len(rows)
    assert set().union(*per_shard.values()) == {user_id for user_id, _ in rows}
    assert sum(1 for ids in per_shard.values() if ids) > 8  # spread, not piled up


def test_a_backfill_of_some_shards_touches_only_their_users(engine, db, instance):
    user_ids = make_journals(engine, seed=9, user_count=120)
    chosen = {"02", "03", "04"}

    execution = run_rollup(
        db,
        instance,
        tags={
            "dagster/asset_partition_range_start": "02",
            "dagster/asset_partition_range_end": "04",
        },
    )

    assert execution.success
    assert sorted(str(m.partition) for m in execution.get_asset_materialization_events()) == sorted(
        chosen
    )
    expected_ids = {u for u in user_ids if shard_of(u) in chosen}
    assert expected_ids and stats_user_ids(engine) == expected_ids
    expected = expected_stats(engine)
    assert as_records(stored_stats(engine)) == as_records(expected.loc[sorted(expected_ids)])


@pytest.mark.parametrize("named_by", ["id", "email"])
def test_one_user_can_be_refreshed_alone(engine, db, instance, named_by):
    user_ids = make_journals(engine, seed=13, user_count=40)
    target = user_ids[17]
    with engine.connect() as c:
        email = c.execute(select(users.c.email).where(users.c.id == target)).scalar_one()

    execution = run_rollup(
        db,
        instance,
        partition_key=shard_of(target),
        user=str(target) if named_by == "id" else email.upper(),
    )

    assert execution.success
    assert stats_user_ids(engine) == {target}
    assert job_result(execution)["usersUpdated"] == 1
    assert as_records(stored_stats(engine)) == as_records(expected_stats(engine).loc[[target]])


def test_an_unknown_user_fails_clearly(engine, db, instance):
    make_journals(engine, seed=14, user_count=5)

    execution = run_rollup(db, instance, partition_key="00", user="nobody@example.com")

    assert not execution.success
    assert failure_message(execution) == "no user with id or email 'nobody@example.com'"
    assert stats_user_ids(engine) == set()


def test_stale_rows_are_overwritten_and_re_runs_are_idempotent(engine, db, instance):
    user_ids = make_journals(engine, seed=15, user_count=30)
    with engine.begin() as c:
        c.execute(
            insert(user_discipline_stats),
            [{"user_id": u, **dict.fromkeys(STAT_COLUMNS, 999)} for u in user_ids[:10]],
        )

    first = run_rollup(db, instance)
    after_first = as_records(stored_stats(engine))
    second = run_rollup(db, instance)

    assert first.success and second.success
    assert after_first == as_records(expected_stats(engine))
    assert as_records(stored_stats(engine)) == after_first


def test_stats_follow_the_journal(engine, db, instance):
    make_journals(engine, seed=16, user_count=30)
    run_rollup(db, instance)
    with engine.begin() as c:
        c.execute(update(shots).values(stop_loss_honored=False))

    run_rollup(db, instance)

    assert as_records(stored_stats(engine)) == as_records(expected_stats(engine))


def test_dry_run_reports_changes_nothing_and_materializes_nothing(engine, db, instance):
    user_ids = make_journals(engine, seed=17, user_count=30)
    run_rollup(db, instance)
    with engine.begin() as c:
        c.execute(
            update(user_discipline_stats)
            .where(user_discipline_stats.c.user_id.in_(user_ids[:4]))
            .values(total_shots=user_discipline_stats.c.total_shots + 1)
        )
    before = as_records(stored_stats(engine))

    execution = run_rollup(db, instance, dry_run=True)

    assert execution.success
    assert as_records(stored_stats(engine)) == before
    assert execution.get_asset_materialization_events() == []
    result = job_result(execution)
    assert (result["dryRun"], result["wouldUpdate"], result["wouldChange"]) == (True, 30, 4)


def test_the_checks_catch_an_inconsistent_table(engine, db, instance):
    now = db_now(engine)
    with engine.begin() as c:
        broken = add_user(c)
        c.execute(
            insert(user_discipline_stats).values(
                user_id=broken,
                total_shots=1,
                stop_loss_honored_count=2,
                abort_trigger_honored_count=3,
                updated_at=now,
            )
        )
        add_user(c)  # has no row

    execution = run_rollup(db, instance, dry_run=True)

    failed = {c.check_name for c in execution.get_asset_check_evaluations() if not c.passed}
    assert failed == {
        "honored_plus_ignored_within_total",
        "abort_counts_within_targets",
        "every_user_has_a_row",
    }


def test_the_freshness_check_allows_26_hours(engine, db, instance):
    (freshness_check,) = [c for c in defs.asset_checks or [] if "freshness" in str(c.check_keys)]
    checks_job = dg.define_asset_job(
        "freshness", selection=dg.AssetSelection.checks(freshness_check)
    )
    check_defs = dg.Definitions(
        assets=[*(defs.assets or [])],
        asset_checks=[freshness_check],
        jobs=[checks_job],
        resources={"db": db},
    )
    with dg.instance_for_test() as fresh_instance:
        never = check_defs.resolve_job_def("freshness").execute_in_process(instance=fresh_instance)
        (stale,) = never.get_asset_check_evaluations()
        assert stale.passed is False

        make_journals(engine, seed=18, user_count=5)
        run_rollup(db, fresh_instance)
        after = check_defs.resolve_job_def("freshness").execute_in_process(instance=fresh_instance)
        (fresh,) = after.get_asset_check_evaluations()
        assert fresh.passed is True
        params = fresh.metadata["dagster/freshness_params"].value
        assert isinstance(params, dict)
        assert params["lower_bound_delta_seconds"] == 26 * 3600


def test_the_schedule_runs_every_shard_in_one_run(instance):
    schedule = defs.resolve_schedule_def("discipline_stats_rollup_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 1 * * *", "UTC")
    data = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
    (request,) = data.run_requests or []
    assert request.tags["dagster/asset_partition_range_start"] == "00"
    assert request.tags["dagster/asset_partition_range_end"] == "15"
