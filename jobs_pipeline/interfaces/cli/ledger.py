"""`undo` and `why`: what a run changed, taken back or explained."""

import os
from typing import Any

from jobs_pipeline.formats import utc_second
from jobs_pipeline.interfaces.cli.common import UsageError
from jobs_pipeline.interfaces.cli.runs import start_and_report
from jobs_pipeline.interfaces.cli.tokens import project_database


def command_undo(run_id: str, *, dry_run: bool) -> int:
    from jobs_pipeline.definitions import defs
    from jobs_pipeline.interfaces.launching.plans import LaunchPlan
    from jobs_pipeline.operator_tools.undo import JOB_NAME, OP_NAME
    from jobs_pipeline.tags import DRY_RUN_TAG

    with project_database():
        pass  # the schema is there and current
    plan = LaunchPlan(
        run_config={"ops": {OP_NAME: {"config": {"run_id": run_id.strip(), "dry_run": dry_run}}}},
        tags={DRY_RUN_TAG: "true"} if dry_run else {},
    )
    return start_and_report(defs.resolve_job_def(JOB_NAME), plan)


def command_why(id_or_email: str) -> int:
    import uuid

    from jobs_pipeline.storage.ledger import changes_to_user
    from jobs_pipeline.storage.users import find_user

    with project_database() as engine, engine.connect() as connection:
        try:
            user_id = str(find_user(connection, id_or_email))
        except LookupError:
            try:  # a user the app has since deleted is still in the ledger by id
                user_id = str(uuid.UUID(id_or_email.strip()))
            except ValueError:
                raise UsageError(f"no user with id or email {id_or_email.strip()!r}") from None
        entries = changes_to_user(connection, user_id)
    if not entries:
        print(f"no changes by the jobs are recorded for user {user_id}")
        return 0
    print_changes(entries)
    return 0


def command_why_run(run_id: str) -> int:
    from jobs_pipeline.storage.ledger import changes_of_run
    from jobs_pipeline.storage.ui_actions import actions_on_run
    from jobs_pipeline.tags import BACKFILL_TAG

    run_id = run_id.strip()
    with project_database() as engine:
        run = run_in_instance(run_id)
        backfill_id = run.tags.get(BACKFILL_TAG) if run is not None else None
        with engine.connect() as connection:
            entries = changes_of_run(connection, run_id)
            actions = actions_on_run(connection, run_id, backfill_id)
    for line in who_started(run, actions):
        print(line)
    if not entries:
        print(
            f"no changes are recorded for run {run_id} (it changed nothing, is past"
            " the ledger's retention, or its job keeps no ledger: the rollup)"
        )
        return 0
    print_changes(entries)
    return 0


def run_in_instance(run_id: str) -> Any:
    """The run as the instance records it (its tags say who started it); None without an
    instance (`DAGSTER_HOME` unset and no `dev` instance for this database) or such a run.
    """
    if not os.environ.get("DAGSTER_HOME"):
        return None
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        return instance.get_run_by_id(run_id)


def who_started(run: Any, actions: list[Any]) -> list[str]:
    """The run's origin from its tags, then what was done to it in the UI, and by whom."""
    lines = []
    if run is not None:
        lines.append(
            f"run {run.run_id} ({run.job_name}, {run.status.value}): {origin_of(run.tags)}"
        )
    for action in actions:
        when = utc_second(action.acted_at)
        lines.append(f"{when}  in the UI, {action.email}: {action.summary} ({action.outcome})")
    return lines


def origin_of(tags: dict[str, str]) -> str:
    from jobs_pipeline.tags import BACKFILL_TAG, SCHEDULE_TAG, SENSOR_TAG, TRIGGERED_BY_TAG

    if TRIGGERED_BY_TAG in tags:
        origin = f"started by {tags[TRIGGERED_BY_TAG]}"
    elif SCHEDULE_TAG in tags:
        origin = f"started by the schedule {tags[SCHEDULE_TAG]}"
    elif SENSOR_TAG in tags:
        origin = f"started by the sensor {tags[SENSOR_TAG]}"
    else:
        origin = "started outside the CLI, the API and the door (no jobs_pipeline/triggered_by)"
    if BACKFILL_TAG in tags:
        origin += f", in backfill {tags[BACKFILL_TAG]}"
    return origin


def print_changes(entries: list[Any]) -> None:
    from jobs_pipeline.storage.ledger import describe_change

    for entry in entries:
        when = utc_second(entry.changed_at)
        print(
            f"{when}  {entry.job} run {entry.run_id}  {entry.table_name} {entry.row_key}\n"
            f"    {describe_change(entry.before, entry.after)}\n"
            f"    because {entry.reason}"
        )
