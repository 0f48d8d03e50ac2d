"""Where a deployment stands, read from its Dagster instance: the daemons' heartbeats, the
queue and what each waiting run waits for, the pools and who holds their slots, each
job's last runs. One reading, three readers: the waiting-run alert (a sensor), `doctor`
and the Prometheus metrics, so the three never disagree about what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from jobs_pipeline.formats import elapsed
from jobs_pipeline.job_parts.results import result_of
from jobs_pipeline.tags import DRY_RUN_TAG, JOB_LOCK_TAG

# Dagster's daemons write a heartbeat every 30 s; one older than this is a daemon that
# is not running (the rule an operator's Prometheus loads says the same).
DAEMON_DOWN_AFTER_SECONDS = 300
QUEUE_DAEMON = "QUEUED_RUN_COORDINATOR"
IN_PROGRESS = [
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
# How far back a job's last run (and last success) is looked for.
HISTORY_LOOKBACK_RUNS = 25


def daemon_heartbeat_ages(instance: dg.DagsterInstance, now: float) -> dict[str, float]:
    """Seconds since each required daemon's last heartbeat; infinite for one never seen."""
    beats = instance.get_daemon_heartbeats()
    return {
        daemon: now - beats[daemon].timestamp if daemon in beats else math.inf
        for daemon in instance.get_required_daemon_types()
    }


# -- pools ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldSlot:
    pool: str
    run_id: str
    step_key: str
    run: dg.DagsterRun | None  # None: the run is no longer in the instance

    @property
    def by_finished_run(self) -> bool:
        return self.run is None or self.run.is_finished


@dataclass(frozen=True)
class Pool:
    name: str
    limit: int | None  # None: no limit row yet (dagster.yaml's default applies when made)
    held: tuple[HeldSlot, ...]
    # Steps of started runs waiting for a slot: (run id, since when, epoch seconds).
    waiting: tuple[tuple[str, float], ...]

    @property
    def full(self) -> bool:
        return self.limit is not None and len(self.held) >= self.limit


def job_pools(jobs: Iterable[dg.JobDefinition]) -> list[str]:
    """Every concurrency pool the jobs' ops name (`writes_<table>`)."""
    return sorted(
        {
            pool
            for job in jobs
            for node in job.nodes_in_topological_order
            if (pool := getattr(node.definition, "pool", None))
        }
    )


def read_pools(instance: dg.DagsterInstance, names: Iterable[str]) -> list[Pool]:
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    limits = {limit.name: limit.limit for limit in storage.get_pool_limits()}
    infos = {name: storage.get_concurrency_info(name) for name in sorted(set(names))}
    holder_ids = {slot.run_id for info in infos.values() for slot in info.claimed_slots}
    holders = runs_by_id(instance, holder_ids)
    return [
        Pool(
            name=name,
            limit=limits.get(name),
            held=tuple(
                HeldSlot(name, slot.run_id, slot.step_key, holders.get(slot.run_id))
                for slot in info.claimed_slots
            ),
            waiting=tuple(
                (step.run_id, step.enqueued_timestamp.timestamp())
                for step in info.pending_steps
                if step.assigned_timestamp is None
            ),
        )
        for name, info in infos.items()
    ]


def runs_by_id(instance: dg.DagsterInstance, run_ids: Iterable[str]) -> dict[str, dg.DagsterRun]:
    wanted = sorted(set(run_ids))
    if not wanted:
        return {}
    return {run.run_id: run for run in instance.get_runs(dg.RunsFilter(run_ids=wanted))}


# -- the queue --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WaitingRun:
    """A run not yet doing its work: QUEUED, or started with a step waiting for a pool."""

    run: dg.DagsterRun
    since: float  # epoch seconds
    waits_for: str  # what it waits for, in words an operator acts on

    def waited(self, now: float) -> float:
        return now - self.since


def waiting_runs(
    instance: dg.DagsterInstance, pools: Sequence[Pool], now: float
) -> list[WaitingRun]:
    """Every run waiting for its turn, the longest-waiting first."""
    in_progress = [
        record.dagster_run
        for record in instance.get_run_records(dg.RunsFilter(statuses=IN_PROGRESS))
    ]
    queued = list(instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED])))
    queue_age = daemon_heartbeat_ages(instance, now).get(QUEUE_DAEMON)
    limit = max_concurrent_runs(instance)
    found = [
        WaitingRun(
            record.dagster_run,
            record.create_timestamp.timestamp(),
            queued_for(record.dagster_run, in_progress, pools, queue_age, limit, len(queued)),
        )
        for record in queued
    ]
    started = {run.run_id: run for run in in_progress}
    for pool in pools:
        for run_id, since in pool.waiting:
            if run_id in started:
                found.append(WaitingRun(started[run_id], since, pool_held(pool)))
    return sorted(found, key=lambda waiting: waiting.since)


def queued_for(
    run: dg.DagsterRun,
    in_progress: Sequence[dg.DagsterRun],
    pools: Sequence[Pool],
    queue_age: float | None,
    limit: int | None,
    queued: int,
) -> str:
    if queue_age is not None and queue_age > DAEMON_DOWN_AFTER_SECONDS:
        return (
            "the daemon, which takes runs off the queue: its last heartbeat is"
            f" {elapsed(queue_age)} old"
        )
    lock = run.tags.get(JOB_LOCK_TAG)
    ahead = [other for other in in_progress if lock and other.tags.get(JOB_LOCK_TAG) == lock]
    if ahead:
        first = ahead[0]
        return f"its job's turn (one run at a time): run {first.run_id} ({first.status.value})"
    full = [pool for pool in pools if pool.name in pools_of(run) and pool.full]
    if full:
        return pool_held(full[0])
    if limit is not None and len(in_progress) >= limit:
        return f"the queue's limit of {limit} runs at once ({len(in_progress)} in progress)"
    return f"its turn in the queue ({queued} runs queued)"


def pool_held(pool: Pool) -> str:
    holders = ", ".join(
        f"run {slot.run_id} ({slot.run.status.value if slot.run else 'gone'})" for slot in pool.held
    )
    slots = f"{pool.limit} slot{'s' if pool.limit != 1 else ''}"
    return f"pool {pool.name} ({slots}): held by {holders or 'nobody'}"


def pools_of(run: dg.DagsterRun) -> set[str]:
    concurrency = run.run_op_concurrency
    if concurrency is None:
        return set()
    return set(concurrency.all_pools or concurrency.root_key_counts)


def max_concurrent_runs(instance: dg.DagsterInstance) -> int | None:
    queue = instance.get_concurrency_config().run_queue_config
    return queue.max_concurrent_runs if queue is not None else None


# -- each job's history -----------------------------------------------------------------------


@dataclass(frozen=True)
class JobHistory:
    """A job's last real run and last real success (dry runs change nothing: not counted)."""

    job: str
    last_run: dg.RunRecord | None
    last_success: dg.RunRecord | None


def real_runs(records: Iterable[dg.RunRecord]) -> list[dg.RunRecord]:
    return [r for r in records if r.dagster_run.tags.get(DRY_RUN_TAG) != "true"]


def job_history(instance: dg.DagsterInstance, job_name: str) -> JobHistory:
    recent = real_runs(
        instance.get_run_records(dg.RunsFilter(job_name=job_name), limit=HISTORY_LOOKBACK_RUNS)
    )
    last_success = next(
        (r for r in recent if r.dagster_run.status == dg.DagsterRunStatus.SUCCESS), None
    )
    if last_success is None:
        successes = real_runs(
            instance.get_run_records(
                dg.RunsFilter(job_name=job_name, statuses=[dg.DagsterRunStatus.SUCCESS]),
                limit=HISTORY_LOOKBACK_RUNS,
            )
        )
        last_success = successes[0] if successes else None
    return JobHistory(job_name, recent[0] if recent else None, last_success)


# Where a run's result is recorded: an op's output, or the rollup's observation of its totals.
RESULT_EVENTS = {dg.DagsterEventType.STEP_OUTPUT, dg.DagsterEventType.ASSET_OBSERVATION}


def recorded_result(instance: dg.DagsterInstance, run_id: str) -> dict[str, Any] | None:
    """The run's result, read from its few result events, not its whole event log (a
    run downgrading thousands of users logs a line for each).
    """
    records = instance.get_records_for_run(run_id, of_type=RESULT_EVENTS).records
    return result_of(
        record.event_log_entry.dagster_event
        for record in records
        if record.event_log_entry.dagster_event is not None
    )


def run_seconds(record: dg.RunRecord) -> float | None:
    if record.start_time is None or record.end_time is None:
        return None
    return record.end_time - record.start_time
