"""The dead man's switch: one ping to `HEARTBEAT_URL` per successful scheduled run.

Real runs of global-override-check on a real instance and database (scheduled ones carry
the tag the daemon's scheduler gives them), the sensor evaluated as the daemon evaluates
it, and a real HTTP service receiving the pings.
"""

from collections.abc import Iterator

import dagster as dg
import pytest

from jobs_pipeline.definitions import defs
from jobs_pipeline.interfaces.launching.plans import op_config_for
from jobs_pipeline.jobs.global_override_check import global_override_check_job
from jobs_pipeline.monitoring.monitoring import heartbeat_sensor
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.resources.heartbeats import Heartbeats
from jobs_pipeline.tags import HEARTBEAT_PINGED_TAG, SCHEDULE_TAG
from jobs_pipeline_tests.support.app_data import set_override
from jobs_pipeline_tests.support.receivers import PingReceiver
from jobs_pipeline_tests.support.running import temporary_instance

SCHEDULED = {SCHEDULE_TAG: "global_override_check_schedule"}


@pytest.fixture
def heartbeat_instance() -> Iterator[dg.DagsterInstance]:
    with temporary_instance() as instance:
        yield instance


def run(
    db: AppDatabase,
    instance: dg.DagsterInstance,
    tags: dict[str, str] | None = None,
    *,
    dry_run: bool = False,
):
    config = op_config_for(global_override_check_job, dry_run=dry_run)
    return global_override_check_job.execute_in_process(
        resources={"db": db}, instance=instance, raise_on_error=False, tags=tags, run_config=config
    )


def evaluate(instance: dg.DagsterInstance, heartbeats: Heartbeats) -> None:
    with dg.build_sensor_context(
        instance=instance, resources={"heartbeats": heartbeats}, definitions=defs
    ) as context:
        heartbeat_sensor(context)


def test_each_successful_scheduled_run_pings_once_and_no_other_run_does(
    engine, db, heartbeat_instance, ping_receiver: PingReceiver
):
    heartbeats = Heartbeats(url=f"{ping_receiver.base}/ping/key/{{job}}")
    scheduled = run(db, heartbeat_instance, SCHEDULED)
    by_hand = run(db, heartbeat_instance)
    dry = run(db, heartbeat_instance, SCHEDULED, dry_run=True)
    with engine.begin() as connection:
        set_override(connection, "not an object")  # the next run fails on it
    failed = run(db, heartbeat_instance, SCHEDULED)
    assert (scheduled.success, by_hand.success, dry.success, failed.success) == (
        True,
        True,
        True,
        False,
    )

    evaluate(heartbeat_instance, heartbeats)
    evaluate(heartbeat_instance, heartbeats)  # evaluated again: no second ping

    assert ping_receiver.paths == ["/ping/key/global-override-check"]
    pinged = heartbeat_instance.get_run_by_id(scheduled.run_id)
    assert pinged is not None and HEARTBEAT_PINGED_TAG in pinged.tags


def test_a_ping_the_service_refused_is_sent_at_the_next_evaluation(
    db, heartbeat_instance, ping_receiver: PingReceiver
):
    scheduled = run(db, heartbeat_instance, SCHEDULED)
    assert scheduled.success

    evaluate(heartbeat_instance, Heartbeats(url="http://127.0.0.1:1/{job}"))  # nobody listens
    assert ping_receiver.paths == []
    evaluate(heartbeat_instance, Heartbeats(url=f"{ping_receiver.base}/{{job}}"))

    assert ping_receiver.paths == ["/global-override-check"]


def test_without_heartbeat_url_nothing_is_pinged(db, heartbeat_instance):
    scheduled = run(db, heartbeat_instance, SCHEDULED)

    evaluate(heartbeat_instance, Heartbeats())

    assert HEARTBEAT_PINGED_TAG not in heartbeat_instance.get_run_by_id(scheduled.run_id).tags
