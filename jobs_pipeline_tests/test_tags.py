"""The run tags, named once (`jobs_pipeline/tags.py`), are the names the world reads:
Dagster's as Dagster spells them, the project's as docs/jobs.md and the instance's
settings spell them.
"""

from pathlib import Path

import yaml

from jobs_pipeline import tags

DAGSTER_YAML = Path(__file__).resolve().parents[1] / "deploy" / "dagster.yaml"


def test_dagsters_tags_are_the_names_dagster_writes():
    assert [
        tags.SCHEDULE_TAG,
        tags.SENSOR_TAG,
        tags.BACKFILL_TAG,
        tags.PARTITION_TAG,
        tags.PARTITION_RANGE_START_TAG,
        tags.PARTITION_RANGE_END_TAG,
        tags.PRIORITY_TAG,
        tags.MAX_RUNTIME_TAG,
        tags.WILL_RETRY_TAG,
        tags.CODE_SERVER_TAG,
        tags.CONTAINER_TAG,
        tags.CELERY_TASK_TAG,
    ] == [
        "dagster/schedule_name",
        "dagster/sensor_name",
        "dagster/backfill",
        "dagster/partition",
        "dagster/asset_partition_range_start",
        "dagster/asset_partition_range_end",
        "dagster/priority",
        "dagster/max_runtime",
        "dagster/will_retry",
        ".dagster/grpc_info",
        "docker/container_id",
        "dagster-celery/task_id",
    ]


def test_the_container_tag_is_the_one_dagster_docker_writes():
    from dagster_docker.docker_run_launcher import DOCKER_CONTAINER_ID_TAG

    assert tags.CONTAINER_TAG == DOCKER_CONTAINER_ID_TAG


def test_the_projects_tags_are_its_own_and_the_job_lock_is_the_instances_limit():
    own = [
        value
        for name, value in vars(tags).items()
        if name.endswith("_TAG")
        and isinstance(value, str)
        and value not in (tags.CONTAINER_TAG, tags.CELERY_TASK_TAG)
        and "dagster/" not in value
    ]
    assert all(value.startswith("jobs_pipeline/") for value in own if value != tags.JOB_LOCK_TAG), (
        own
    )
    settings = yaml.safe_load(DAGSTER_YAML.read_text())
    limits = settings["concurrency"]["runs"]["tag_concurrency_limits"]
    assert [limit["key"] for limit in limits] == [tags.JOB_LOCK_TAG]
    assert tags.alerted_tag("still running", "email") == "jobs_pipeline/alerted_still_running_email"
    assert tags.forecast_abnormal_tag("x") == "jobs_pipeline/forecast_abnormal_x"
