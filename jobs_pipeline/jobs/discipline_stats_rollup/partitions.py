"""What the asset is and how its users are split: its key, its 16 user shards (its
partitions), and the scope of a run (some shards, or one user).
"""

import uuid
from dataclasses import dataclass

import dagster as dg
from sqlalchemy import ColumnElement, func, literal

from jobs_pipeline.tags import PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG

ASSET_KEY = dg.AssetKey("user_discipline_stats")
SHARD_COUNT = 16

user_shards = dg.StaticPartitionsDefinition([f"{shard:02d}" for shard in range(SHARD_COUNT)])
# Every shard in one run: a range of partitions, one run, one statement.
ALL_SHARDS_TAGS = {
    PARTITION_RANGE_START_TAG: user_shards.get_partition_keys()[0],
    PARTITION_RANGE_END_TAG: user_shards.get_partition_keys()[-1],
}


def shard_of(user_id: uuid.UUID) -> str:
    """The partition key of a user's shard; `user_shard` below computes the same in SQL."""
    return f"{user_id.bytes[15] % SHARD_COUNT:02d}"


def user_shard(user_id: ColumnElement[uuid.UUID]) -> ColumnElement[int]:
    return func.get_byte(func.uuid_send(user_id), 15).op("%")(SHARD_COUNT)


@dataclass(frozen=True)
class Scope:
    """Which users a run covers: some shards, or one user (who lies in one shard)."""

    shards: tuple[str, ...]
    user_id: uuid.UUID | None = None

    def describe(self) -> str:
        if self.user_id is not None:
            return f"user {self.user_id}"
        if len(self.shards) == SHARD_COUNT:
            return f"all {SHARD_COUNT} shards"
        return f"shards {', '.join(self.shards)}"

    def covers(self, user_id: ColumnElement[uuid.UUID]) -> ColumnElement[bool]:
        if self.user_id is not None:
            return user_id == self.user_id
        if len(self.shards) == SHARD_COUNT:
            return literal(True)
        return user_shard(user_id).in_([int(shard) for shard in self.shards])


def shard_groups(scope: Scope, parallel_groups: int) -> list[Scope]:
    """The scope split into at most `parallel_groups` contiguous groups of shards, as
    even as can be (16 shards in 3 groups: 6, 5, 5); one user is one group.
    """
    if scope.user_id is not None:
        return [scope]
    count = max(1, min(parallel_groups, len(scope.shards)))
    size, extra = divmod(len(scope.shards), count)
    groups, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        groups.append(Scope(shards=scope.shards[start:end]))
        start = end
    return groups
