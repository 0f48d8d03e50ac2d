"""What the benchmarks share: a run in a process of its own, WAL positions, tables.

WAL is measured as the distance between `pg_current_wal_lsn()` before and after a
run. The position is the whole server's, so the bench runs on a private server with
nothing else writing, and a CHECKPOINT comes first: the first change to a page after a
checkpoint logs the whole page, which is what a daily run, long after the last
checkpoint, really writes. Without it the figure would depend on when the server last
happened to checkpoint.
"""

import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import pandas as pd
from sqlalchemy import Engine, text


def run_in_own_process(module: str, *args: str) -> dict[str, Any]:
    """Runs `python -m module args...` and returns the JSON of its last stdout line.

    Its own process, so its peak memory (ru_maxrss) is the run's and nothing of the bench's.
    """
    out = subprocess.run(  # noqa: S603 (our own interpreter and module)
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"{module} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def checkpoint(engine: Engine) -> None:
    """A CHECKPOINT, so the next run logs every page it first touches, as a daily run does."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("CHECKPOINT"))


def wal_position(engine: Engine) -> str:
    with engine.connect() as connection:
        return str(connection.execute(text("SELECT pg_current_wal_lsn()")).scalar_one())


def wal_bytes_since(engine: Engine, position: str) -> int:
    """The WAL the server wrote since `position` (from `wal_position`)."""
    with engine.connect() as connection:
        return int(
            connection.execute(
                text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), CAST(:since AS pg_lsn))"),
                {"since": position},
            ).scalar_one()
        )


def render_table(rows: Sequence[dict[str, Any]], formats: dict[str, str]) -> str:
    """A plain-text table; `formats` maps a column to a format spec such as ".2f".

    A missing figure (None) prints as "-", not "nan", so a skipped variant reads as such.
    """
    frame = pd.DataFrame(list(rows))
    for column, spec in formats.items():
        if column in frame:
            frame[column] = [
                "-" if value is None or pd.isna(value) else format(value, spec)
                for value in frame[column]
            ]
    table: str = frame.to_string(index=False, na_rep="-")
    return table
