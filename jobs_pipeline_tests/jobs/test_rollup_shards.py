"""How the rollup splits its users: pure functions, no database."""

import uuid

from jobs_pipeline.jobs.discipline_stats_rollup import SHARD_COUNT, Scope, shard_groups, shard_of

ALL = tuple(f"{shard:02d}" for shard in range(SHARD_COUNT))


def test_shards_split_into_contiguous_groups_as_even_as_can_be():
    groups = shard_groups(Scope(shards=ALL), 3)
    assert [len(group.shards) for group in groups] == [6, 5, 5]
    assert tuple(shard for group in groups for shard in group.shards) == ALL
    assert shard_groups(Scope(shards=ALL), 1) == [Scope(shards=ALL)]
    assert len(shard_groups(Scope(shards=ALL[:2]), 8)) == 2  # never more groups than shards


def test_one_user_is_one_group_in_that_users_shard():
    user = uuid.UUID("00000000-0000-4000-8000-0000000000ff")
    assert shard_of(user) == f"{0xFF % SHARD_COUNT:02d}"
    scope = Scope(shards=(shard_of(user),), user_id=user)
    assert shard_groups(scope, 4) == [scope]
    assert scope.describe() == f"user {user}"
    assert Scope(shards=ALL).describe() == f"all {SHARD_COUNT} shards"
    assert Scope(shards=("03", "04")).describe() == "shards 03, 04"
