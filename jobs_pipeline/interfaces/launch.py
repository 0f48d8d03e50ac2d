"""Starting a job and reading its outcome: shared by the CLI and the admin API.

Every start goes through the one Dagster instance. Where a daemon serves it, the run
is submitted to its queue, as a schedule's or the UI's would be, and so waits for its
job's turn (`job_lock`), its table's pool and its priority, and is stopped at its
`dagster/max_runtime`; a run worker process of the deployment executes it. Where no
daemon serves the instance (the CLI on a bare database), the run executes in the
calling process on that instance: the pools still keep it from writing a table
another run of the instance writes, and the database's writer lock keeps it from any
other writer. Either way a run's result is read back from the `result` metadata its
step recorded, so whoever started it sees exactly what the Dagster UI shows.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from jobs_pipeline.dagster_private import in_process_workspace, submit_run
from jobs_pipeline.definitions import defs
from jobs_pipeline.formats import display_name
from jobs_pipeline.job_parts.guard import parse_as_of
from jobs_pipeline.job_parts.results import result_of
from jobs_pipeline.job_parts.scheduling import is_maintenance_job
from jobs_pipeline.jobs.discipline_stats_rollup import shard_of
from jobs_pipeline.runs.outcomes import (
    RunOutcome,
    first_failure_line,
    record_operator_stop,
    was_interrupted,
)
from jobs_pipeline.runs.status import job_pools
from jobs_pipeline.storage.embedded import state_dir
from jobs_pipeline.storage.users import find_user
from jobs_pipeline.tags import (
    DRY_RUN_TAG,
    PARTITION_RANGE_END_TAG,
    PARTITION_RANGE_START_TAG,
    PARTITION_TAG,
    TRIGGERED_BY_TAG,
)

DEFINITIONS_MODULE = "jobs_pipeline.definitions"
# The code location's name in every workspace (workspace.yaml, a deployment's).
LOCATION_NAME = "jobs_pipeline"

# The queue's daemon writes a heartbeat every 30 s or so; one older than this is a
# daemon that is not running.
DAEMON_HEARTBEAT_FRESH_SECONDS = 90
QUEUE_DAEMON = "QUEUED_RUN_COORDINATOR"


def job_catalog() -> dict[str, dg.JobDefinition]:
    """Dagster job name -> job, in name order, for every job users run by name."""
    jobs = sorted(defs.resolve_all_job_defs(), key=lambda job: job.name)
    return {job.name: job for job in jobs if is_maintenance_job(job)}


def latest_run(instance: dg.DagsterInstance, job_name: str) -> dg.RunRecord | None:
    records = instance.get_run_records(filters=dg.RunsFilter(job_name=job_name), limit=1)
    return records[0] if records else None


def cli_flag(option: str) -> str:
    """How the command line spells a run option: `as_of` is `--as-of`."""
    return "--" + option.replace("_", "-")


def jobs_taking(option: str) -> str:
    """The jobs that take the option, as users name them: `tier-expiration and promo-cleanup`."""
    names = [display_name(name) for name, job in job_catalog().items() if takes_option(job, option)]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def not_taken(option: str, job: dg.JobDefinition, spell: Callable[[str], str]) -> LaunchError:
    return LaunchError(
        f"{spell(option)} applies only to {jobs_taking(option)}, not {display_name(job.name)}"
    )


class LaunchError(ValueError):
    """The launch request cannot be honoured (an option the job does not take, an unknown user)."""


@dataclass(frozen=True)
class LaunchPlan:
    """What a run of one job is started with: its run config and its tags."""

    run_config: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)


def plan_launch(
    job: dg.JobDefinition,
    *,
    dry_run: bool = False,
    user: str | None = None,
    allow_large: bool = False,
    app_engine: Engine | None = None,
    as_of: str | None = None,
    spell: Callable[[str], str] = cli_flag,
) -> LaunchPlan:
    """A partitioned job runs all its partitions in one run; `user` (only the rollup
    takes it) narrows the run to that user's shard and that user; `as_of` (a dry run of
    a job whose rule follows the clock) evaluates the rule as if the run happened then.
    `spell` names an option in a refusal as the caller's interface does (a flag, a key).
    """
    extra: dict[str, Any] = {}
    tags = {DRY_RUN_TAG: "true"} if dry_run else {}
    if as_of is not None:
        extra["as_of"] = checked_as_of(job, as_of, dry_run=dry_run, spell=spell)
    if allow_large:
        if not takes_option(job, "allow_large"):
            raise not_taken("allow_large", job, spell)
        extra["allow_large"] = True
    if user is not None:
        if not takes_option(job, "user"):
            raise not_taken("user", job, spell)
        if app_engine is None:
            raise ValueError("looking a user up needs the app database")
        with app_engine.connect() as connection:
            try:
                user_id = find_user(connection, user)
            except LookupError as missing:
                raise LaunchError(str(missing)) from None
        return LaunchPlan(
            run_config=op_config_for(job, dry_run=dry_run, user=str(user_id), **extra),
            tags={**tags, PARTITION_TAG: shard_of(user_id)},
        )
    if job.partitions_def is not None:
        keys = job.partitions_def.get_partition_keys()
        tags[PARTITION_RANGE_START_TAG] = keys[0]
        tags[PARTITION_RANGE_END_TAG] = keys[-1]
    return LaunchPlan(run_config=op_config_for(job, dry_run=dry_run, **extra), tags=tags)


def checked_as_of(
    job: dg.JobDefinition, as_of: str, *, dry_run: bool, spell: Callable[[str], str]
) -> str:
    """`as_of` as given, once it is known to be a timestamp the run will accept: refused
    here, the caller gets a usage error (exit 2, or 400) instead of a failed run.
    """
    if not takes_option(job, "as_of"):
        raise not_taken("as_of", job, spell)
    if not dry_run:
        raise LaunchError(
            f"{spell('as_of')} applies only to dry runs ({spell('dry_run')}): a real run"
            " always uses the database's clock"
        )
    try:
        parse_as_of(as_of)
    except ValueError as bad:
        raise LaunchError(str(bad)) from None
    return as_of


def op_config_for(job: dg.JobDefinition, **op_config: Any) -> dict[str, Any]:
    """Run config giving `op_config` to every op of the job that takes those keys
    (the job's own op or asset; not the asset checks Dagster adds beside it).
    """
    return {
        "ops": {
            node.name: {"config": op_config}
            for node in job.nodes_in_topological_order
            if set(op_config) <= set(config_fields(node.definition))
        }
    }


def takes_option(job: dg.JobDefinition, option: str) -> bool:
    return any(option in config_fields(node.definition) for node in job.nodes_in_topological_order)


def config_fields(definition: Any) -> dict[str, Any]:
    schema = definition.config_schema
    if schema is None:
        return {}
    return dict(getattr(schema.as_field().config_type, "fields", {}) or {})


def dev_home() -> Path:
    """`jobs-pipeline dev`'s instance folder, in the state folder."""
    return state_dir() / "dagster_home"


SERVED_DATABASE_FILE = "app_database"


def database_identity(url: str) -> str:
    """The app database a URL names, without its password: where dev's instance says
    which database it serves.
    """
    parsed = make_url(url)
    host = parsed.host or parsed.query.get("host") or ""
    return f"{parsed.username or ''}@{host}:{parsed.port or ''}/{parsed.database or ''}"


def record_served_database(home: Path, app_url: str) -> None:
    (home / SERVED_DATABASE_FILE).write_text(database_identity(app_url) + "\n")


SERVED_WEBSERVER_FILE = "webserver_url"


def record_served_webserver(home: Path, url: str) -> None:
    (home / SERVED_WEBSERVER_FILE).write_text(url + "\n")


def adopt_dev_instance(app_url: str) -> Path | None:
    """With `DAGSTER_HOME` unset, the dev instance of this state folder, when there is one
    and it serves the same app database: it becomes `DAGSTER_HOME` for this process, so
    runs started here show in dev's UI and `list` shows them.
    """
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    home = dev_home()
    served = home / SERVED_DATABASE_FILE
    if not (home / "dagster.yaml").exists() or not served.exists():
        return None
    if served.read_text().strip() != database_identity(app_url):
        return None
    os.environ["DAGSTER_HOME"] = str(home)
    webserver = home / SERVED_WEBSERVER_FILE
    if webserver.exists():  # its links name dev's UI, on whatever port dev serves it
        os.environ.setdefault("DAGSTER_WEBSERVER_URL", webserver.read_text().strip())
    return home


@contextlib.contextmanager
def open_instance() -> Iterator[dg.DagsterInstance]:
    """`$DAGSTER_HOME`'s instance, or a temporary one (no history) when it is unset."""
    instance = (
        dg.DagsterInstance.get()
        if os.environ.get("DAGSTER_HOME")
        else dg.DagsterInstance.ephemeral()
    )
    with instance:
        prepare_pools(instance)
        yield instance


def project_pools() -> list[str]:
    """Every concurrency pool the project's ops name."""
    return job_pools(defs.resolve_all_job_defs())


def prepare_pools(instance: dg.DagsterInstance) -> None:
    """Creates each pool's limit row (dagster.yaml's default) before runs claim slots:
    two runs creating the same row at once on a fresh storage would crash one of them.
    A limit an operator has set (`dagster instance concurrency set`) is kept.
    """
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits or instance.is_ephemeral:
        return
    known = {limit.name for limit in storage.get_pool_limits()}
    for pool in project_pools():
        if pool not in known:
            with contextlib.suppress(Exception):  # another process created it first
                storage.initialize_concurrency_limit_to_default(pool)


def daemon_serves(instance: dg.DagsterInstance) -> bool:
    """Whether a daemon takes this instance's queued runs: a queue, and a fresh heartbeat."""
    if instance.is_ephemeral or not isinstance(instance.run_coordinator, dg.QueuedRunCoordinator):
        return False
    heartbeat = instance.get_daemon_heartbeats().get(QUEUE_DAEMON)
    return heartbeat is not None and time.time() - heartbeat.timestamp < (
        DAEMON_HEARTBEAT_FRESH_SECONDS
    )


# -- starting runs --------------------------------------------------------------------------


class RunQueue:
    """Submits runs to the instance's queue, as `dagster job launch` does.

    The code location is loaded in this process under the deployment's location name,
    so the daemon launches the run from its own copy of that location (a code server in
    a deployment). Dagster has no public Python API for this (see `dagster_private`).
    """

    def __init__(self, instance: dg.DagsterInstance):
        self.instance = instance
        self._stack = contextlib.ExitStack()
        self._workspace: Any = None

    def __enter__(self) -> RunQueue:
        self._workspace = self._stack.enter_context(
            in_process_workspace(self.instance, DEFINITIONS_MODULE, LOCATION_NAME)
        )
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self._stack.close()

    def submit(self, job_name: str, plan: LaunchPlan, *, triggered_by: str) -> str:
        """Creates the run with its job's tags and the plan's, queues it, returns its id."""
        tags = {**plan.tags, TRIGGERED_BY_TAG: triggered_by}
        return submit_run(
            self.instance, self._workspace, LOCATION_NAME, job_name, plan.run_config, tags
        )

    def cancel_if_queued(self, run_id: str) -> bool:
        """Takes a run that has not started off the queue; a started one goes on."""
        run = self.instance.get_run_by_id(run_id)
        if run is None or run.status != dg.DagsterRunStatus.QUEUED:
            return False
        return bool(self.instance.run_coordinator.cancel_run(run_id))


def execute_here(
    instance: dg.DagsterInstance,
    job: dg.JobDefinition,
    plan: LaunchPlan,
    *,
    triggered_by: str,
    run_id: str | None = None,
) -> RunOutcome:
    """Runs the job in this process, in the instance's history, tagged with who started it."""
    execution = job.execute_in_process(
        run_config=plan.run_config,
        instance=instance,
        raise_on_error=False,
        run_id=run_id,
        tags={**plan.tags, TRIGGERED_BY_TAG: triggered_by},
    )
    events = execution.all_events
    if execution.success:
        return RunOutcome(execution.run_id, "SUCCESS", result=result_of(events))
    if was_interrupted(events):
        record_operator_stop(instance, execution.run_id, triggered_by)
        raise KeyboardInterrupt  # the caller's Ctrl-C path takes it from here
    return RunOutcome(execution.run_id, "FAILURE", error=first_failure_line(events))
