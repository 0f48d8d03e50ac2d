"""Everything Dagster loads, in one place: jobs, schedules and resources.

Loading this module opens no connection; configuration comes from the
environment (`DATABASE_URL`) when a run starts.
"""

import dagster as dg

from jobs_pipeline.database import AppDatabase
from jobs_pipeline.jobs.global_override_check import (
    global_override_check_job,
    global_override_check_schedule,
)
from jobs_pipeline.jobs.promo_cleanup import promo_cleanup_job, promo_cleanup_schedule
from jobs_pipeline.jobs.tier_expiration import tier_expiration_job, tier_expiration_schedule

defs = dg.Definitions(
    jobs=[tier_expiration_job, global_override_check_job, promo_cleanup_job],
    schedules=[tier_expiration_schedule, global_override_check_schedule, promo_cleanup_schedule],
    resources={"db": AppDatabase(url=dg.EnvVar("DATABASE_URL"))},
    # Each job is one op over SQL: a subprocess per step would only add seconds.
    executor=dg.in_process_executor,
)
