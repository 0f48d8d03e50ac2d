"""Synthetic app data for benchmarks, written set-based so a million users is practical.

Per user: 3 targets (half with an abort trigger, some triggered), 2 aims per target,
5 shots per aim, about 10% of honored flags NULL.
"""

from sqlalchemy import Engine, text

STATEMENTS = [
    """
    INSERT INTO users (email, tier, tier_source)
    SELECT 'bench' || n || '@example.com', 'free', 'default'
    FROM generate_series(1, :users) AS n
    """,
    """
    INSERT INTO targets (user_id, symbol, abort_trigger, abort_triggered)
    SELECT u.id, 'SYM',
           CASE WHEN random() < 0.5 THEN 'close below 100' END,
           random() < 0.3
    FROM users AS u, generate_series(1, 3)
    """,
    "INSERT INTO aims (target_id) SELECT t.id FROM targets AS t, generate_series(1, 2)",
    """
    INSERT INTO shots (aim_id, stop_loss_honored, profit_target_honored)
    SELECT a.id,
           CASE WHEN random() < 0.1 THEN NULL ELSE random() < 0.7 END,
           CASE WHEN random() < 0.1 THEN NULL ELSE random() < 0.6 END
    FROM aims AS a, generate_series(1, 5)
    """,
]


def generate(engine: Engine, users: int, seed: float = 0.42) -> None:
    """Fills an empty app database with `users` users and their journals."""
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        connection.execute(text("SET LOCAL work_mem = '256MB'"))
        connection.execute(text("SELECT setseed(:seed)"), {"seed": seed})
        for statement in STATEMENTS:
            connection.execute(text(statement), {"users": users})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("SET statement_timeout = 0"))
        connection.execute(text("VACUUM ANALYZE"))
