"""Everything Dagster loads, in one place: assets, jobs, schedules, sensors and resources.

Loading this module opens no connection. Configuration comes from the environment:
required settings as `EnvVar`s resolved when a run starts (a missing one is an
error, never an empty string); optional ones (SMTP, alert channels) only when set.
"""

import os

import dagster as dg

from jobs_pipeline.jobs.discipline_stats_rollup import (
    discipline_stats_rollup_job,
    discipline_stats_rollup_schedule,
    user_discipline_stats_asset,
    user_discipline_stats_freshness_checks,
    user_discipline_stats_freshness_sensor,
)
from jobs_pipeline.jobs.email_delivery import email_delivery_job, email_delivery_schedule
from jobs_pipeline.jobs.global_override_check import (
    global_override_check_job,
    global_override_check_schedule,
)
from jobs_pipeline.jobs.history_retention import history_retention_job, history_retention_schedule
from jobs_pipeline.jobs.promo_cleanup import promo_cleanup_job, promo_cleanup_schedule
from jobs_pipeline.jobs.tier_expiration import tier_expiration_job, tier_expiration_schedule
from jobs_pipeline.jobs.trial_reminder import trial_reminder_job, trial_reminder_schedule
from jobs_pipeline.monitoring.monitoring import MONITORING_SENSORS
from jobs_pipeline.operator_tools.forecast import tonight_forecast_job, tonight_forecast_schedule
from jobs_pipeline.operator_tools.undo import undo_run_job
from jobs_pipeline.resources.alerting import DEFAULT_WEBSERVER_URL, AlertChannels
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.resources.heartbeats import Heartbeats
from jobs_pipeline.resources.mail import Mailer
from jobs_pipeline.runs.workers import run_worker_executor


def optional_env(name: str) -> dg.EnvVar | None:
    """An `EnvVar` for a setting that may be left unset (its value is read at run time)."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


mailer = Mailer(
    host=optional_env("SMTP_HOST"),
    port=dg.EnvVar.int("SMTP_PORT") if os.environ.get("SMTP_PORT") else 25,
    username=optional_env("SMTP_USERNAME"),
    password=optional_env("SMTP_PASSWORD"),
    sender=optional_env("SMTP_FROM") or "jobs-pipeline@localhost",
    starttls=env_flag("SMTP_STARTTLS"),
)

defs = dg.Definitions(
    assets=[user_discipline_stats_asset],
    asset_checks=[*user_discipline_stats_freshness_checks],
    jobs=[
        tier_expiration_job,
        global_override_check_job,
        promo_cleanup_job,
        discipline_stats_rollup_job,
        trial_reminder_job,
        email_delivery_job,
        history_retention_job,
        undo_run_job,
        tonight_forecast_job,
    ],
    schedules=[
        tier_expiration_schedule,
        global_override_check_schedule,
        promo_cleanup_schedule,
        discipline_stats_rollup_schedule,
        trial_reminder_schedule,
        email_delivery_schedule,
        history_retention_schedule,
        tonight_forecast_schedule,
    ],
    sensors=[user_discipline_stats_freshness_sensor, *MONITORING_SENSORS],
    resources={
        "db": AppDatabase(url=dg.EnvVar("DATABASE_URL")),
        "mailer": mailer,
        "alerts": AlertChannels(
            mailer=mailer,
            email_to=optional_env("ALERT_EMAIL_TO"),
            webhook_url=optional_env("ALERT_WEBHOOK_URL"),
            webserver_url=optional_env("DAGSTER_WEBSERVER_URL") or DEFAULT_WEBSERVER_URL,
        ),
        "heartbeats": Heartbeats(url=optional_env("HEARTBEAT_URL")),
    },
    # Each job is one op over SQL: a subprocess per step would only add seconds. The run's
    # worker holds a sign of life meanwhile, which the daemon checks (dagster.yaml).
    executor=run_worker_executor,
)
