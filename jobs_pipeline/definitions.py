"""Everything Dagster loads, in one place: assets, jobs, schedules, sensors and resources.

Loading this module opens no connection; configuration comes from the
environment (`DATABASE_URL`) when a run starts.
"""

import dagster as dg

from jobs_pipeline.database import AppDatabase
from jobs_pipeline.jobs.discipline_stats_rollup import (
    discipline_stats_rollup_job,
    discipline_stats_rollup_schedule,
    user_discipline_stats_asset,
    user_discipline_stats_freshness_checks,
    user_discipline_stats_freshness_sensor,
)
from jobs_pipeline.jobs.global_override_check import (
    global_override_check_job,
    global_override_check_schedule,
)
from jobs_pipeline.jobs.promo_cleanup import promo_cleanup_job, promo_cleanup_schedule
from jobs_pipeline.jobs.tier_expiration import tier_expiration_job, tier_expiration_schedule

defs = dg.Definitions(
    assets=[user_discipline_stats_asset],
    asset_checks=[*user_discipline_stats_freshness_checks],
    jobs=[
        tier_expiration_job,
        global_override_check_job,
        promo_cleanup_job,
        discipline_stats_rollup_job,
    ],
    schedules=[
        tier_expiration_schedule,
        global_override_check_schedule,
        promo_cleanup_schedule,
        discipline_stats_rollup_schedule,
    ],
    sensors=[user_discipline_stats_freshness_sensor],
    resources={"db": AppDatabase(url=dg.EnvVar("DATABASE_URL"))},
    # Each job is one op over SQL: a subprocess per step would only add seconds.
    executor=dg.in_process_executor,
)
