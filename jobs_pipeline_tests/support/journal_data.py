"""Random trading journals (seeded) and a pandas oracle for the discipline statistics."""

import random
import uuid
from typing import Any

import pandas as pd
from sqlalchemy import Engine, insert

from jobs_pipeline.jobs.discipline_stats_rollup import STAT_COLUMNS
from jobs_pipeline.storage.app_tables import aims, shots, targets, user_discipline_stats, users


def random_flag(rng: random.Random) -> bool | None:
    return rng.choice([True, True, False, None])


def make_journals(engine: Engine, seed: int, user_count: int = 60) -> list[uuid.UUID]:
    """Users with no targets, targets with no aims, aims with no shots, NULL flags,
    abort_triggered with and without an abort_trigger: every edge of the rules.
    """
    rng = random.Random(seed)
    user_ids: list[uuid.UUID] = []
    user_rows: list[dict[str, Any]] = []
    target_rows: list[dict[str, Any]] = []
    aim_rows: list[dict[str, Any]] = []
    shot_rows: list[dict[str, Any]] = []
    for n in range(user_count):
        user_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        user_ids.append(user_id)
        user_rows.append({"id": user_id, "email": f"s{seed}-u{n}@example.com"})
        for _ in range(rng.choice([0, 0, 1, 2, 3, 5])):
            target_id = uuid.UUID(int=rng.getrandbits(128), version=4)
            target_rows.append(
                {
                    "id": target_id,
                    "user_id": user_id,
                    "symbol": rng.choice(["AAPL", "SPY", "BTC"]),
                    "abort_trigger": rng.choice([None, "close below 100"]),
                    "abort_triggered": rng.random() < 0.4,
                }
            )
            for _ in range(rng.choice([0, 1, 2, 3])):
                aim_id = uuid.UUID(int=rng.getrandbits(128), version=4)
                aim_rows.append({"id": aim_id, "target_id": target_id})
                for _ in range(rng.choice([0, 1, 3, 6])):
                    shot_rows.append(
                        {
                            "aim_id": aim_id,
                            "stop_loss_honored": random_flag(rng),
                            "profit_target_honored": random_flag(rng),
                        }
                    )
    with engine.begin() as c:
        for table, rows in ((users, user_rows), (targets, target_rows), (aims, aim_rows)):
            if rows:
                c.execute(insert(table), rows)
        if shot_rows:
            c.execute(insert(shots), shot_rows)
    return user_ids


def expected_stats(engine: Engine) -> pd.DataFrame:
    """The statistics computed straight from the raw tables, indexed by user id."""
    with engine.connect() as c:
        user_ids = pd.read_sql_query("SELECT id AS user_id FROM users", c)
        target_rows = pd.read_sql_query(
            "SELECT id AS target_id, user_id, abort_trigger, abort_triggered FROM targets", c
        )
        aim_rows = pd.read_sql_query("SELECT id AS aim_id, target_id FROM aims", c)
        shot_rows = pd.read_sql_query(
            "SELECT aim_id, stop_loss_honored, profit_target_honored FROM shots", c
        )
    joined = shot_rows.merge(aim_rows, on="aim_id").merge(target_rows, on="target_id")
    per_user_shots = joined.groupby("user_id").agg(
        total_shots=("aim_id", "size"),
        stop_loss_honored_count=("stop_loss_honored", lambda s: int((s == True).sum())),  # noqa: E712
        stop_loss_ignored_count=("stop_loss_honored", lambda s: int((s == False).sum())),  # noqa: E712
        profit_target_honored_count=("profit_target_honored", lambda s: int((s == True).sum())),  # noqa: E712
        profit_target_ignored_count=("profit_target_honored", lambda s: int((s == False).sum())),  # noqa: E712
    )
    target_rows["ignored"] = target_rows["abort_trigger"].notna() & ~target_rows[
        "abort_triggered"
    ].astype(bool)
    per_user_targets = target_rows.groupby("user_id").agg(
        abort_trigger_honored_count=("abort_triggered", lambda s: int(s.astype(bool).sum())),
        abort_trigger_ignored_count=("ignored", lambda s: int(s.sum())),
    )
    expected = (
        user_ids.set_index("user_id")
        .join(per_user_shots)
        .join(per_user_targets)
        .fillna(0)
        .astype(int)
    )
    return expected[list(STAT_COLUMNS)].sort_index()


def stored_stats(engine: Engine) -> pd.DataFrame:
    with engine.connect() as c:
        stored = pd.read_sql_table(user_discipline_stats.name, c)
    return stored.set_index("user_id")[list(STAT_COLUMNS)].astype(int).sort_index()


def as_records(frame: pd.DataFrame) -> dict[Any, dict[str, int]]:
    return {index: dict(row) for index, row in frame.iterrows()}
