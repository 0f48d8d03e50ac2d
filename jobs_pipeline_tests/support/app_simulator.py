"""Plays the web app against its database while the jobs run: a process of its own.

    python -m jobs_pipeline_tests.support.app_simulator URL STOP_FILE RESULT_FILE STARTED_FILE

Once its first transaction has committed it creates STARTED_FILE. Until STOP_FILE
exists it renews expired users, adds shots and flips honored flags for a set of active
users, and holds row locks on users for a moment, each in a short transaction with the
app's own lock timeout. It writes what it did to RESULT_FILE.
"""

import json
import random
import sys
import time
from pathlib import Path

import psycopg
from psycopg import errors

from jobs_pipeline_tests.support.deadlines import deadline

# Longer than any of the jobs' short transactions takes even on a starved machine, far
# shorter than a wait on a lock held for good: a timeout here is a job holding rows too
# long. How long the app did wait is a figure of the test (build/reliability/live_app.json),
# not a bound on it.
LOCK_TIMEOUT = f"{deadline(30):.0f}s"


def main(url: str, stop_file: Path, result_file: Path, started_file: Path) -> None:
    rng = random.Random(7)
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=False, options=f"-c lock_timeout={LOCK_TIMEOUT}") as db:
        expired = [
            r[0]
            for r in db.execute(
                "SELECT id FROM users WHERE tier <> 'free' AND tier_expires_at < now()"
            ).fetchall()
        ]
        active = [
            r[0]
            for r in db.execute(
                "SELECT id FROM users WHERE tier = 'free' ORDER BY id LIMIT 300"
            ).fetchall()
        ]
        aims_of_active = [
            r[0]
            for r in db.execute(
                "SELECT a.id FROM aims a JOIN targets t ON t.id = a.target_id"
                " WHERE t.user_id = ANY(%s)",
                (active,),
            ).fetchall()
        ]
        db.commit()
        rng.shuffle(expired)
        renewed: list[str] = []
        done = {"renew": 0, "add_shot": 0, "flip": 0, "hold_lock": 0}
        lock_timeouts = 0
        slowest = 0.0
        while not stop_file.exists():
            action = rng.choice(list(done))
            started = time.monotonic()
            try:
                if action == "renew" and expired:
                    user = expired.pop()
                    db.execute(
                        "UPDATE users SET tier = 'premium', tier_source = 'purchase',"
                        " tier_expires_at = now() + interval '30 days', updated_at = now()"
                        " WHERE id = %s",
                        (user,),
                    )
                    db.commit()
                    renewed.append(str(user))
                elif action == "add_shot":
                    db.execute(
                        "INSERT INTO shots (aim_id, stop_loss_honored, profit_target_honored)"
                        " VALUES (%s, %s, %s)",
                        (rng.choice(aims_of_active), rng.random() < 0.5, None),
                    )
                    db.commit()
                elif action == "flip":
                    db.execute(
                        "UPDATE shots SET stop_loss_honored = NOT stop_loss_honored"
                        " WHERE aim_id = %s",
                        (rng.choice(aims_of_active),),
                    )
                    db.commit()
                elif action == "hold_lock":
                    db.execute(
                        "SELECT 1 FROM users WHERE id = %s FOR UPDATE",
                        (rng.choice(active + expired[:50] or active),),
                    )
                    time.sleep(0.05)
                    db.commit()
                else:
                    continue
                done[action] += 1
                if not started_file.exists():
                    started_file.touch()
            except errors.LockNotAvailable:
                db.rollback()
                lock_timeouts += 1
            slowest = max(slowest, time.monotonic() - started)
    result_file.write_text(
        json.dumps(
            {
                "renewed": renewed,
                "active": [str(a) for a in active],
                "transactions": done,
                "lock_timeouts": lock_timeouts,
                "slowest_transaction_s": slowest,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
