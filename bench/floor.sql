-- (c) The floor: the whole rollup as one hand-written statement, no Dagster, no shards.
INSERT INTO user_discipline_stats (
    user_id, total_shots,
    stop_loss_honored_count, stop_loss_ignored_count,
    profit_target_honored_count, profit_target_ignored_count,
    abort_trigger_honored_count, abort_trigger_ignored_count,
    updated_at)
SELECT u.id,
       coalesce(s.total, 0), coalesce(s.sl_h, 0), coalesce(s.sl_i, 0),
       coalesce(s.pt_h, 0), coalesce(s.pt_i, 0),
       coalesce(t.ab_h, 0), coalesce(t.ab_i, 0),
       now()
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
ON CONFLICT (user_id) DO UPDATE SET
    total_shots = EXCLUDED.total_shots,
    stop_loss_honored_count = EXCLUDED.stop_loss_honored_count,
    stop_loss_ignored_count = EXCLUDED.stop_loss_ignored_count,
    profit_target_honored_count = EXCLUDED.profit_target_honored_count,
    profit_target_ignored_count = EXCLUDED.profit_target_ignored_count,
    abort_trigger_honored_count = EXCLUDED.abort_trigger_honored_count,
    abort_trigger_ignored_count = EXCLUDED.abort_trigger_ignored_count,
    updated_at = EXCLUDED.updated_at
