"""Which jobs users run by name, and what a run of one is started with: its run config
and tags, each option checked against the job and refused in the caller's own words
(`--as-of` on the command line, `as_of` in the API).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from sqlalchemy import Engine

from jobs_pipeline.definitions import defs
from jobs_pipeline.formats import display_name
from jobs_pipeline.job_parts.guard import parse_as_of
from jobs_pipeline.job_parts.scheduling import is_maintenance_job
from jobs_pipeline.jobs.discipline_stats_rollup import shard_of
from jobs_pipeline.storage.users import find_user
from jobs_pipeline.tags import (
    DRY_RUN_TAG,
    PARTITION_RANGE_END_TAG,
    PARTITION_RANGE_START_TAG,
    PARTITION_TAG,
)


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
