"""Every run tag this project reads or writes, Dagster's own and its own, in one place.

Dagster's are taken from Dagster (`dagster_private.py`, where they are private), never
typed again; the project's own start `jobs_pipeline/`, but `job_lock`, the key the
instance's one-run-per-job limit counts by (`deploy/dagster.yaml`). A renamed tag is
renamed here, and everything that reads or writes it follows.
"""

import dagster as dg
from dagster_celery import tags as celery_tags

from jobs_pipeline import dagster_private as private

# -- Dagster's: what started a run, and what the queue and run monitoring read --------------

SCHEDULE_TAG = private.SCHEDULE_NAME_TAG
SENSOR_TAG = private.SENSOR_NAME_TAG
BACKFILL_TAG = private.BACKFILL_ID_TAG
PARTITION_TAG = private.PARTITION_NAME_TAG
PARTITION_RANGE_START_TAG = private.ASSET_PARTITION_RANGE_START_TAG
PARTITION_RANGE_END_TAG = private.ASSET_PARTITION_RANGE_END_TAG
# The queue launches higher values first.
PRIORITY_TAG = private.PRIORITY_TAG
# Run monitoring stops a run that goes on past this many seconds.
MAX_RUNTIME_TAG = dg.MAX_RUNTIME_SECONDS_TAG
# On a failed run that Dagster will retry: not the final failure.
WILL_RETRY_TAG = private.WILL_RETRY_TAG
# The code server the default run launcher started the run on.
CODE_SERVER_TAG = private.CODE_SERVER_TAG
# The container a run executes in (runs in containers), the Celery task that executes it
# (runs on the fleet).
# dagster-docker's DOCKER_CONTAINER_ID_TAG, spelled here: importing it imports the docker
# library into every process that loads the code, half a second each, for one string
# (test_tags.py checks it is dagster-docker's).
CONTAINER_TAG = "docker/container_id"
CELERY_TASK_TAG = celery_tags.DAGSTER_CELERY_TASK_ID_TAG
# A run carrying one of these was handed to a worker of its own, which holds the run's
# sign of life (`jobs_pipeline/runs/workers.py`); any other executed in a command's process.
RUN_WORKER_TAGS = (CODE_SERVER_TAG, CONTAINER_TAG, CELERY_TASK_TAG)

# -- the project's -------------------------------------------------------------------------------

# Who started a run by hand: `cli:<OS user>`, `api:<email>` or `ui:<email>`.
TRIGGERED_BY_TAG = "jobs_pipeline/triggered_by"
# One run at a time per job: the instance's tag limit counts runs by this key.
JOB_LOCK_TAG = "job_lock"
# A run still going after this many seconds alerts once.
ALERT_AFTER_TAG = "jobs_pipeline/alert_after_seconds"
# A run still waiting for its turn (queued, or for a pool's slot) after this long alerts.
ALERT_WAITING_AFTER_TAG = "jobs_pipeline/alert_waiting_after_seconds"
# An operators' tool, not a job run by name (undo, the forecast).
TOOL_TAG = "jobs_pipeline/tool"
# Shown in the runs list, so a dry run never passes for a real one.
DRY_RUN_TAG = "jobs_pipeline/dry_run"
# A run the blast-radius guard stopped before it wrote.
GUARD_REFUSED_TAG = "jobs_pipeline/guard_refused"
# A successful scheduled run whose heartbeat was sent.
HEARTBEAT_PINGED_TAG = "jobs_pipeline/heartbeat_pinged"
# Which alerts went out about a run, and on which channel: `jobs_pipeline/alerted_<kind>_<channel>`.
ALERTED_TAG_PREFIX = "jobs_pipeline/alerted"
# A forecast run's verdict on a job: `jobs_pipeline/forecast_abnormal_<job>`.
FORECAST_ABNORMAL_TAG_PREFIX = "jobs_pipeline/forecast_abnormal_"


def alerted_tag(kind: str, channel: str) -> str:
    """`jobs_pipeline/alerted_failed_webhook`: the alert of `kind` went out on `channel`."""
    return f"{ALERTED_TAG_PREFIX}_{kind.replace(' ', '_')}_{channel}"


def forecast_abnormal_tag(job: str) -> str:
    """`jobs_pipeline/forecast_abnormal_tier_expiration`: "true" or "false" on each
    forecast run, so abnormal forecasts are counted per job with one tag filter.
    """
    return f"{FORECAST_ABNORMAL_TAG_PREFIX}{job}"
