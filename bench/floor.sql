-- (c) The floor: the whole rollup as one hand-written statement, no Dagster, no shards.
--
-- Only rows whose counts changed reach the upsert (the NOT EXISTS): a steady-state day
-- writes nothing. The WHERE on the DO UPDATE alone is not enough for that: ON CONFLICT
-- DO UPDATE locks every conflicting row even when its WHERE then skips the update, and
-- a row lock is WAL too, a full page image for each page after a checkpoint (measured:
-- about a third of a first run's WAL at 5,000 users, against zero with the NOT EXISTS).
-- The DO UPDATE's WHERE stays for a row another writer changed meanwhile.
INSERT INTO user_discipline_stats (
    user_id, total_shots,
    stop_loss_honored_count, stop_loss_ignored_count,
    profit_target_honored_count, profit_target_ignored_count,
    abort_trigger_honored_count, abort_trigger_ignored_count,
    updated_at)
SELECT c.user_id, c.total_shots,
       c.stop_loss_honored_count, c.stop_loss_ignored_count,
       c.profit_target_honored_count, c.profit_target_ignored_count,
       c.abort_trigger_honored_count, c.abort_trigger_ignored_count,
       now()
FROM (
    SELECT u.id AS user_id,
           coalesce(s.total, 0) AS total_shots,
           coalesce(s.sl_h, 0) AS stop_loss_honored_count,
           coalesce(s.sl_i, 0) AS stop_loss_ignored_count,
           coalesce(s.pt_h, 0) AS profit_target_honored_count,
           coalesce(s.pt_i, 0) AS profit_target_ignored_count,
           coalesce(t.ab_h, 0) AS abort_trigger_honored_count,
           coalesce(t.ab_i, 0) AS abort_trigger_ignored_count
    FROM users AS u
    LEFT JOIN (
        SELECT tg.user_id,
               count(*) AS total,
               count(*) FILTER (WHERE sh.stop_loss_honored) AS sl_h,
               count(*) FILTER (WHERE NOT sh.stop_loss_honored) AS sl_i,
               count(*) FILTER (WHERE sh.profit_target_honored) AS pt_h,
               count(*) FILTER (WHERE NOT sh.profit_target_honored) AS pt_i
        FROM shots AS sh
        JOIN aims AS a ON a.id = sh.aim_id
        JOIN targets AS tg ON tg.id = a.target_id
        GROUP BY tg.user_id
    ) AS s ON s.user_id = u.id
    LEFT JOIN (
        SELECT user_id,
               count(*) FILTER (WHERE abort_triggered) AS ab_h,
               count(*) FILTER (WHERE abort_trigger IS NOT NULL AND NOT abort_triggered) AS ab_i
        FROM targets
        GROUP BY user_id
    ) AS t ON t.user_id = u.id
) AS c
WHERE NOT EXISTS (
    SELECT FROM user_discipline_stats AS o
    WHERE o.user_id = c.user_id
      AND (o.total_shots, o.stop_loss_honored_count, o.stop_loss_ignored_count,
           o.profit_target_honored_count, o.profit_target_ignored_count,
           o.abort_trigger_honored_count, o.abort_trigger_ignored_count)
          IS NOT DISTINCT FROM
          (c.total_shots, c.stop_loss_honored_count, c.stop_loss_ignored_count,
           c.profit_target_honored_count, c.profit_target_ignored_count,
           c.abort_trigger_honored_count, c.abort_trigger_ignored_count)
)
ON CONFLICT (user_id) DO UPDATE SET
    total_shots = EXCLUDED.total_shots,
    stop_loss_honored_count = EXCLUDED.stop_loss_honored_count,
    stop_loss_ignored_count = EXCLUDED.stop_loss_ignored_count,
    profit_target_honored_count = EXCLUDED.profit_target_honored_count,
    profit_target_ignored_count = EXCLUDED.profit_target_ignored_count,
    abort_trigger_honored_count = EXCLUDED.abort_trigger_honored_count,
    abort_trigger_ignored_count = EXCLUDED.abort_trigger_ignored_count,
    updated_at = EXCLUDED.updated_at
WHERE (user_discipline_stats.total_shots,
       user_discipline_stats.stop_loss_honored_count,
       user_discipline_stats.stop_loss_ignored_count,
       user_discipline_stats.profit_target_honored_count,
       user_discipline_stats.profit_target_ignored_count,
       user_discipline_stats.abort_trigger_honored_count,
       user_discipline_stats.abort_trigger_ignored_count)
      IS DISTINCT FROM
      (EXCLUDED.total_shots,
       EXCLUDED.stop_loss_honored_count,
       EXCLUDED.stop_loss_ignored_count,
       EXCLUDED.profit_target_honored_count,
       EXCLUDED.profit_target_ignored_count,
       EXCLUDED.abort_trigger_honored_count,
       EXCLUDED.abort_trigger_ignored_count)
