-- Demo data for the embedded default: a few hundred users in every state the
-- jobs care about. Set-based and repeatable (setseed); times are relative to now.
SELECT setseed(0.42);

-- 300 users: 60% free, the rest premium or pro; of the paid ones about half have
-- expired (tier-expiration downgrades them), some never expire, some are trials.
INSERT INTO users (email, role, tier, tier_source, tier_expires_at, trial_ends_at, created_at, updated_at)
SELECT
    format('trader%s@example.com', lpad(n::text, 3, '0')),
    'user',
    CASE WHEN n % 5 < 3 THEN 'free' WHEN n % 5 = 3 THEN 'premium' ELSE 'pro' END,
    CASE WHEN n % 5 < 3 THEN 'default'
         WHEN n % 4 = 0 THEN 'trial'
         WHEN n % 4 = 1 THEN 'promo'
         ELSE 'purchase' END,
    CASE WHEN n % 5 < 3 THEN NULL
         WHEN n % 7 = 0 THEN NULL                                  -- paid, never expires
         WHEN n % 2 = 0 THEN now() - make_interval(hours => n)     -- expired
         ELSE now() + make_interval(days => n % 60 + 1) END,      -- still paid
    CASE WHEN n % 5 >= 3 AND n % 4 = 0 THEN now() + make_interval(hours => (n % 96) + 2) END,
    now() - make_interval(days => n),
    now() - make_interval(days => n % 30)
FROM generate_series(1, 299) AS n;

INSERT INTO users (email, role, tier, tier_source, created_at, updated_at)
VALUES ('admin@example.com', 'admin', 'pro', 'admin', now() - interval '400 days', now());

-- A global override that expired an hour ago: global-override-check clears it.
INSERT INTO global_config (key, value, updated_at)
VALUES (
    'global_tier_override',
    jsonb_build_object(
        'tier', 'premium',
        'expires_at', to_char((now() - interval '1 hour') AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
    ),
    now() - interval '7 days'
);

INSERT INTO promo_codes (code, tier, duration_days, max_redemptions, valid_from, valid_until, is_active, created_at)
VALUES
    ('LAUNCH2025',  'premium', 30, 1000, now() - interval '500 days', now() - interval '400 days', true,  now() - interval '500 days'),
    ('SUMMER',      'premium', 14, NULL, now() - interval '160 days', now() - interval '70 days',  true,  now() - interval '160 days'),
    ('BLACKFRIDAY', 'pro',     30, 500,  now() - interval '10 days',  now() - interval '1 day',    true,  now() - interval '10 days'),
    ('WELCOME',     'premium', 7,  NULL, now() - interval '700 days', NULL,                        true,  now() - interval '700 days'),
    ('PARTNER',     'pro',     90, 50,   now() - interval '30 days',  now() + interval '60 days',  true,  now() - interval '30 days'),
    ('WINTER',      'premium', 30, NULL, now() - interval '5 days',   now() + interval '90 days',  true,  now() - interval '5 days'),
    ('RETIRED',     'pro',     30, NULL, now() - interval '900 days', now() - interval '800 days', false, now() - interval '900 days');

-- 400 redemptions spread over two years: those older than 365 days are cleaned up.
INSERT INTO promo_redemptions (promo_code_id, user_id, redeemed_at)
SELECT
    (SELECT id FROM promo_codes ORDER BY code OFFSET (n % 7) LIMIT 1),
    (SELECT id FROM users ORDER BY email OFFSET (n % 300) LIMIT 1),
    now() - make_interval(days => (n * 7919) % 730)
FROM generate_series(1, 400) AS n;

-- The journal: about 3 targets a user, 2 aims a target, 5 shots an aim.
INSERT INTO targets (user_id, symbol, abort_trigger, abort_triggered, created_at)
SELECT
    u.id,
    (ARRAY['AAPL', 'MSFT', 'NVDA', 'TSLA', 'SPY', 'BTC-USD', 'EURUSD'])[1 + floor(random() * 7)::int],
    CASE WHEN random() < 0.5 THEN 'close below ' || (50 + floor(random() * 100))::text END,
    random() < 0.25,
    now() - make_interval(days => floor(random() * 300)::int)
FROM users AS u, generate_series(1, 3) AS k
WHERE u.role = 'user' AND random() < 0.95;

INSERT INTO aims (target_id, created_at)
SELECT t.id, t.created_at + interval '1 hour'
FROM targets AS t, generate_series(1, 2);

INSERT INTO shots (aim_id, stop_loss_honored, profit_target_honored, created_at)
SELECT
    a.id,
    CASE WHEN random() < 0.1 THEN NULL ELSE random() < 0.7 END,
    CASE WHEN random() < 0.1 THEN NULL ELSE random() < 0.6 END,
    a.created_at + make_interval(hours => k)
FROM aims AS a, generate_series(1, 5) AS k;
