"""Synthetic app data for benchmarks, written set-based so a million users is practical.

`generate`, for the rollup: per user 3 targets (half with an abort trigger, some
triggered), 2 aims per target, 5 shots per aim, about 10% of honored flags NULL.
`generate_tier_users`, for tier-expiration: users only, some on an expired paid tier.
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


# Users 1..expired: an expired paid tier (premium or pro, bought, promo or trial,
# expired between 1 hour and 30 days ago). The next as many (as far as there are
# users): paying and current, expiring within 30 days or never, which the rule must
# leave alone. The rest: free. Ids are random UUIDs, so expired users are spread over
# the id order the job walks in batches.
TIER_USERS = """
    INSERT INTO users (email, tier, tier_source, tier_expires_at)
    SELECT 'tier' || n || '@example.com',
           CASE WHEN n <= 2 * :expired THEN (ARRAY['premium', 'pro'])[1 + n % 2]
                ELSE 'free' END,
           CASE WHEN n <= 2 * :expired THEN (ARRAY['purchase', 'promo', 'trial'])[1 + n % 3]
                ELSE 'default' END,
           CASE WHEN n <= :expired THEN now() - interval '1 hour' * (1 + n % 720)
                WHEN n <= 2 * :expired AND n % 5 <> 0
                    THEN now() + interval '1 hour' * (1 + n % 720)
           END
    FROM generate_series(1, :users) AS n
"""


def generate_tier_users(engine: Engine, users: int, expired: int) -> None:
    """Fills an empty app database with `users` users, `expired` of them expired."""
    if not 0 <= expired <= users:
        raise ValueError("expired users must be between 0 and the number of users")
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        connection.execute(text(TIER_USERS), {"users": users, "expired": expired})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("SET statement_timeout = 0"))
        connection.execute(text("VACUUM ANALYZE users"))
