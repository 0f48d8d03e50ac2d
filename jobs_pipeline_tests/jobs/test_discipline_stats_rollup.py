import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import Engine, func, insert, literal_column, select, text, update

from jobs_pipeline.definitions import defs
from jobs_pipeline.interfaces.launching.plans import op_config_for
from jobs_pipeline.jobs.discipline_stats_rollup import (
    ALL_SHARDS_TAGS,
    ASSET_KEY,
    SHARD_COUNT,
    STAT_COLUMNS,
    Scope,
    shard_groups,
    shard_of,
    user_shard,
    user_shards,
)
from jobs_pipeline.resources.database import AppDatabase, writer_lock_key
from jobs_pipeline.storage.app_tables import aims, shots, targets, user_discipline_stats, users
from jobs_pipeline.tags import DRY_RUN_TAG
from jobs_pipeline_tests.support.app_data import add_user, db_now
from jobs_pipeline_tests.support.journal_data import (
    as_records,
    expected_stats,
    make_journals,
    stored_stats,
)
from jobs_pipeline_tests.support.running import (
    failure_message,
    job_result,
    log_messages,
    temporary_instance,
)

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


NO_PARTITION: dict[str, str] = {}  # the Launchpad's run with no shard chosen
SOME_SHARDS = {
    "dagster/asset_partition_range_start": "03",
    "dagster/asset_partition_range_end": "05",
}
IN_STEP_CHECKS = {
    "honored_plus_ignored_within_total",
    "abort_counts_within_targets",
    "every_user_has_a_row",
}
Counts = tuple[int, int]  # (usersComputed, shotsCounted)


def oracle_counts_by_shard(engine: Engine, shards: Sequence[str]) -> dict[str, Counts]:
    """Each shard's users and shots, from the pandas oracle and Python's `shard_of`:
    computed apart from the rollup's SQL.
    """
    counts = dict.fromkeys(shards, (0, 0))
    for user_id, total_shots in expected_stats(engine)["total_shots"].items():
        if shard_of(user_id) in counts:
            users_so_far, shots_so_far = counts[shard_of(user_id)]
            counts[shard_of(user_id)] = (users_so_far + 1, shots_so_far + int(total_shots))
    return counts


def shard_metadata(execution: dg.ExecuteInProcessResult) -> dict[str, Mapping[str, Any]]:
    """Each materialization's metadata, by partition; one materialization per shard."""
    materializations = [
        event.step_materialization_data.materialization
        for event in execution.get_asset_materialization_events()
    ]
    metadata = {str(m.partition): m.metadata for m in materializations}
    assert len(metadata) == len(materializations)
    return metadata


def recorded_counts_by_shard(execution: dg.ExecuteInProcessResult) -> dict[str, Counts]:
    """Each shard's own (usersComputed, shotsCounted)."""
    return {shard: counts_of(m) for shard, m in shard_metadata(execution).items()}


def written_by_shard(execution: dg.ExecuteInProcessResult) -> dict[str, int]:
    """Each shard's own usersUpdated: the rows the run wrote there (new or changed)."""
    return {shard: int(m["usersUpdated"].value) for shard, m in shard_metadata(execution).items()}


def counts_of(metadata: Mapping[str, Any]) -> Counts:
    return int(metadata["usersComputed"].value), int(metadata["shotsCounted"].value)


def latest_counts(instance: dg.DagsterInstance, shard: str) -> Counts:
    """What the asset's page shows for a shard: its latest materialization's counts."""
    (record,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=ASSET_KEY, asset_partitions=[shard]), limit=1
    ).records
    assert record.asset_materialization is not None
    return counts_of(record.asset_materialization.metadata)


def materialization_count(instance: dg.DagsterInstance, run_id: str) -> int:
    return sum(
        1
        for record in instance.all_logs(run_id)
        if record.dagster_event is not None and record.dagster_event.is_step_materialization
    )


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
    assert set(metadata) == {"usersUpdated", "usersComputed", "shotsCounted", "scope"}
    assert metadata["scope"].value == "all 16 shards"
    # Evaluated in the asset's own step; the freshness check is its sensor's (the asset's
    # output is skipped, so the run skips that step).
    checks = execution.get_asset_check_evaluations()
    assert {c.check_name for c in checks} == IN_STEP_CHECKS
    assert all(c.passed for c in checks)
    assert all(c.asset_key == ASSET_KEY for c in checks)
    messages = log_messages(instance, execution)
    assert any(
        m.startswith("[discipline-stats-rollup] Computed stats for 60 users (all 16 shards, 2")
        and m.endswith("60 rows new or changed were written")
        for m in messages
    )
    assert any(m.startswith("[discipline-stats-rollup] Result: {") for m in messages)


def test_each_shard_records_its_own_counts(engine, db, instance):
    make_journals(engine, seed=21, user_count=120)
    shards = user_shards.get_partition_keys()

    execution = run_rollup(db, instance)

    assert execution.success
    expected = oracle_counts_by_shard(engine, shards)
    assert len(set(expected.values())) > 1  # shards differ, or the test proves nothing
    assert recorded_counts_by_shard(execution) == expected
    # A first run: every row is new, so every computed user's row was written.
    assert written_by_shard(execution) == {shard: users for shard, (users, _) in expected.items()}
    result = job_result(execution)
    assert result["usersUpdated"] == result["usersComputed"] == 120
    assert result["usersComputed"] == sum(users for users, _ in expected.values())
    assert result["shotsCounted"] == sum(shots for _, shots in expected.values())


def test_a_range_records_exactly_its_shards_with_their_own_counts(engine, db):
    make_journals(engine, seed=22, user_count=120)

    with temporary_instance() as fresh_instance:
        execution = run_rollup(db, fresh_instance, tags=SOME_SHARDS)

        assert execution.success
        expected = oracle_counts_by_shard(engine, ["03", "04", "05"])
        assert recorded_counts_by_shard(execution) == expected
        # The events count for the partitions: the asset's partition status and records.
        assert fresh_instance.get_materialized_partitions(ASSET_KEY) == {"03", "04", "05"}
        assert {shard: latest_counts(fresh_instance, shard) for shard in expected} == expected
    result = job_result(execution)
    assert (result["usersComputed"], result["shotsCounted"]) == tuple(
        map(sum, zip(*expected.values(), strict=True))
    )
    assert result["usersUpdated"] == result["usersComputed"]


def test_a_run_with_no_partition_recomputes_every_shard(engine, db):
    user_ids = make_journals(engine, seed=23, user_count=90)

    with temporary_instance() as fresh_instance:
        execution = run_rollup(db, fresh_instance, tags=NO_PARTITION)

        assert execution.success
        run = fresh_instance.get_run_by_id(execution.run_id)
        assert run is not None and not [key for key in run.tags if "partition" in key]
        expected = oracle_counts_by_shard(engine, user_shards.get_partition_keys())
        assert recorded_counts_by_shard(execution) == expected
        assert fresh_instance.get_materialized_partitions(ASSET_KEY) == set(expected)
        assert {shard: latest_counts(fresh_instance, shard) for shard in expected} == expected
    assert stats_user_ids(engine) == set(user_ids)
    assert as_records(stored_stats(engine)) == as_records(expected_stats(engine))
    assert job_result(execution)["usersUpdated"] == 90
    checks = execution.get_asset_check_evaluations()
    assert {c.check_name for c in checks} == IN_STEP_CHECKS and all(c.passed for c in checks)


def test_a_run_with_no_partition_can_refresh_one_user(engine, db, instance):
    user_ids = make_journals(engine, seed=24, user_count=40)
    target = user_ids[5]

    execution = run_rollup(db, instance, tags=NO_PARTITION, user=str(target))

    assert execution.success
    assert stats_user_ids(engine) == {target}
    assert recorded_counts_by_shard(execution) == {
        shard_of(target): (1, int(expected_stats(engine).loc[target, "total_shots"]))
    }


@pytest.mark.parametrize("tags", [ALL_SHARDS_TAGS, NO_PARTITION], ids=["all-shards", "none"])
def test_the_event_count_does_not_grow_with_users(engine, db, instance, tags):
    make_journals(engine, seed=11, user_count=10)
    small = run_rollup(db, instance, tags=tags)
    make_journals(engine, seed=12, user_count=300)
    large = run_rollup(db, instance, tags=tags)

    assert small.success and large.success
    # The ten users of the first run did not change: only the 300 new rows are written.
    assert (job_result(large)["usersComputed"], job_result(large)["usersUpdated"]) == (310, 300)
    assert len(instance.all_logs(small.run_id)) == len(instance.all_logs(large.run_id))
    # Shards with no users (ten users leave some empty) still get theirs, with zeros.
    assert materialization_count(instance, small.run_id) == SHARD_COUNT
    assert materialization_count(instance, large.run_id) == SHARD_COUNT
    assert (0, 0) in recorded_counts_by_shard(small).values()


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
    assert next(iter(result)) == "dryRun"
    assert (result["dryRun"], result["wouldUpdate"], result["wouldChange"]) == (True, 30, 4)
    run = instance.get_run_by_id(execution.run_id)
    assert run is not None and run.tags[DRY_RUN_TAG] == "true"


def test_a_real_run_waits_for_the_writer_lock_and_a_dry_run_does_not(engine, db, instance):
    make_journals(engine, seed=25, user_count=20)
    impatient = AppDatabase(url=db.url, retry_delay_seconds=0.1, writer_lock_wait_seconds=0)
    key = writer_lock_key("user_discipline_stats")
    with engine.connect() as holder:
        holder.execute(select(func.pg_advisory_lock(*key)))
        holder.commit()
        blocked = run_rollup(impatient, instance)
        dry = run_rollup(impatient, instance, dry_run=True)
        holder.execute(select(func.pg_advisory_unlock(*key)))
        holder.commit()

    assert not blocked.success
    assert failure_message(blocked).startswith("Another run is writing user_discipline_stats")
    assert blocked.get_asset_materialization_events() == []
    assert stats_user_ids(engine) == set()
    assert dry.success and job_result(dry)["wouldUpdate"] == 20


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


@pytest.mark.parametrize("tags", [ALL_SHARDS_TAGS, NO_PARTITION], ids=["all-shards", "none"])
def test_the_freshness_check_allows_26_hours(engine, db, tags):
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
    with temporary_instance() as fresh_instance:
        never = check_defs.resolve_job_def("freshness").execute_in_process(instance=fresh_instance)
        (stale,) = never.get_asset_check_evaluations()
        assert stale.passed is False

        make_journals(engine, seed=18, user_count=5)
        assert run_rollup(db, fresh_instance, tags=tags).success
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


# -- shard groups written at once, and only what changed ------------------------------------------


def row_versions(engine: Engine) -> dict[uuid.UUID, tuple[str, str, Any]]:
    """Each stats row's (xmin, xmax, updated_at): a rewritten row gets a new xmin, even
    unchanged; a row only locked (ON CONFLICT locks before its WHERE) gets an xmax.
    """
    with engine.connect() as c:
        rows = c.execute(
            select(
                user_discipline_stats.c.user_id,
                literal_column("xmin::text"),
                literal_column("xmax::text"),
                user_discipline_stats.c.updated_at,
            )
        ).all()
    return {user_id: (xmin, xmax, updated_at) for user_id, xmin, xmax, updated_at in rows}


def test_shards_split_into_contiguous_balanced_groups():
    every = Scope(tuple(user_shards.get_partition_keys()))
    for count in range(1, SHARD_COUNT + 1):
        groups = shard_groups(every, count)
        sizes = [len(group.shards) for group in groups]
        assert len(groups) == count and max(sizes) - min(sizes) <= 1
        assert [shard for group in groups for shard in group.shards] == list(every.shards)
    assert len(shard_groups(Scope(("03", "04", "05")), 8)) == 3
    one_user = Scope(("07",), user_id=uuid.uuid4())
    assert shard_groups(one_user, 4) == [one_user]


@pytest.mark.parametrize("groups", [None, 1, 3, 4, 16], ids=lambda g: f"groups-{g or 'default'}")
def test_shard_groups_at_once_compute_exactly_the_oracle(engine, db, instance, groups):
    user_ids = make_journals(engine, seed=41, user_count=150)
    with engine.begin() as c:  # stale rows, some of them as they should be
        c.execute(
            insert(user_discipline_stats),
            [{"user_id": u, **dict.fromkeys(STAT_COLUMNS, 0)} for u in user_ids[:40]],
        )
    config = {} if groups is None else {"parallel_groups": groups}

    execution = run_rollup(db, instance, **config)

    assert execution.success, failure_message(execution)
    expected = expected_stats(engine)
    assert as_records(stored_stats(engine)) == as_records(expected)
    assert recorded_counts_by_shard(execution) == oracle_counts_by_shard(
        engine, user_shards.get_partition_keys()
    )
    result = job_result(execution)
    assert result["parallelGroups"] == (groups or 2)
    already_right = int((expected.loc[user_ids[:40]] == 0).all(axis=1).sum())
    assert already_right > 0  # users with no journal: their zero rows stay as they were
    assert result["usersComputed"] == 150
    assert (
        result["usersUpdated"] == sum(written_by_shard(execution).values()) == 150 - already_right
    )


def test_a_range_in_more_groups_than_shards_writes_its_shards_only(engine, db, instance):
    user_ids = make_journals(engine, seed=42, user_count=120)

    execution = run_rollup(db, instance, tags=SOME_SHARDS, parallel_groups=8)

    assert execution.success
    assert job_result(execution)["parallelGroups"] == 3
    expected_ids = {u for u in user_ids if shard_of(u) in {"03", "04", "05"}}
    assert as_records(stored_stats(engine)) == as_records(
        expected_stats(engine).loc[sorted(expected_ids)]
    )


REFUSE_SHARD = """
CREATE FUNCTION refuse_shard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF get_byte(uuid_send(NEW.user_id), 15) % 16 = {shard} THEN
        RAISE EXCEPTION 'shard {shard} refused for the test';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_shard BEFORE INSERT OR UPDATE ON user_discipline_stats
    FOR EACH ROW EXECUTE FUNCTION refuse_shard();
"""


def test_a_failing_group_fails_the_run_and_writes_nothing_while_the_others_commit(
    engine, db, instance
):
    user_ids = make_journals(engine, seed=43, user_count=160)
    assert run_rollup(db, instance, parallel_groups=4).success
    with engine.begin() as c:  # the journal moves on: most users' counts change
        c.execute(update(shots).values(stop_loss_honored=func.not_(shots.c.stop_loss_honored)))
        c.execute(text(REFUSE_SHARD.format(shard=13)))
    before = as_records(stored_stats(engine))
    failing_group = {"12", "13", "14", "15"}  # 16 shards in 4 groups: 13 lies in the last
    in_failing_group = sorted(u for u in user_ids if shard_of(u) in failing_group)
    elsewhere = sorted(u for u in user_ids if shard_of(u) not in failing_group)
    expected = expected_stats(engine)
    assert as_records(expected.loc[in_failing_group]) != {u: before[u] for u in in_failing_group}

    failed = run_rollup(db, instance, parallel_groups=4)

    assert not failed.success
    assert "shard 13 refused for the test" in failure_message(failed)
    assert failed.get_asset_materialization_events() == []
    after = as_records(stored_stats(engine))
    assert {u: after[u] for u in in_failing_group} == {u: before[u] for u in in_failing_group}
    assert {u: after[u] for u in elsewhere} == as_records(expected.loc[elsewhere])
    messages = log_messages(instance, failed)
    assert any(
        "Writing shards 12, 13, 14, 15 failed, nothing of it was written" in m for m in messages
    )

    with engine.begin() as c:
        c.execute(text("DROP TRIGGER refuse_shard ON user_discipline_stats"))
    again = run_rollup(db, instance, parallel_groups=4)

    assert again.success
    assert as_records(stored_stats(engine)) == as_records(expected)
    written = written_by_shard(again)
    assert all(written[shard] == 0 for shard in written if shard not in failing_group)
    assert sum(written[shard] for shard in failing_group) > 0


def test_a_run_with_nothing_changed_writes_nothing_and_a_new_shot_moves_one_row(
    engine, db, instance
):
    user_ids = make_journals(engine, seed=44, user_count=80)
    first = run_rollup(db, instance)
    assert first.success
    versions = row_versions(engine)
    shots_total = job_result(first)["shotsCounted"]

    unchanged = run_rollup(db, instance)

    assert unchanged.success
    assert set(written_by_shard(unchanged).values()) == {0}
    result = job_result(unchanged)
    assert (result["usersUpdated"], result["usersComputed"]) == (0, 80)
    assert result["shotsCounted"] == shots_total  # over every computed user, not the written
    assert row_versions(engine) == versions  # none rewritten nor locked: no new xmin, xmax

    with engine.begin() as c:  # one new shot on one user's aim
        aim_id, owner = c.execute(
            select(aims.c.id, targets.c.user_id)
            .join(targets, targets.c.id == aims.c.target_id)
            .order_by(aims.c.id)
            .limit(1)
        ).one()
        c.execute(insert(shots).values(aim_id=aim_id, stop_loss_honored=True))
    assert owner in user_ids

    one_shot = run_rollup(db, instance)

    assert one_shot.success
    assert written_by_shard(one_shot) == {
        shard: int(shard == shard_of(owner)) for shard in user_shards.get_partition_keys()
    }
    assert job_result(one_shot)["shotsCounted"] == shots_total + 1
    moved = row_versions(engine)
    assert {u for u in versions if moved[u] != versions[u]} == {owner}
    assert moved[owner][0] != versions[owner][0] and moved[owner][2] > versions[owner][2]
    assert as_records(stored_stats(engine)) == as_records(expected_stats(engine))
