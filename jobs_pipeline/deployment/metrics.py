"""The Prometheus metrics: a deployment watched from outside.

`jobs-pipeline metrics` and the admin API's `/metrics` serve one collector. It reads the
Dagster instance and the app database at each scrape and keeps nothing between scrapes,
so a restarted server misses nothing and two servers say the same. It reads what
`doctor` and the sensors read (`status.py`, `outbox.py`), so Prometheus, `doctor` and
the alerts never disagree about what is wrong.

A source that cannot be read (the app database down, say) leaves out its own metrics
and says so in `jobs_pipeline_source_up{source}`; the scrape still answers with the
rest, so the app database being down does not also blind the daemon's alert.

A scrape costs a handful of storage queries per job (its last runs, the last success's
result events, two counts), a few for the queue and the pools, and two queries on the
outbox: never one per run in history or per user. Scrapes are taken one at a time.

Per-job series carry `job_name` (Dagster's job name), not `job`: Prometheus gives every
scraped series a `job` label of its own (the scrape job), which would hide ours.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from prometheus_client import start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from pydantic import ValidationError
from sqlalchemy import Engine, func, select

from jobs_pipeline.formats import first_line
from jobs_pipeline.job_parts.results import JobResult
from jobs_pipeline.job_parts.scheduling import (
    is_maintenance_job,
    schedules_by_job,
    success_overdue_after,
)
from jobs_pipeline.jobs import (
    discipline_stats_rollup,
    email_delivery,
    global_override_check,
    history_retention,
    promo_cleanup,
    tier_expiration,
    trial_reminder,
)
from jobs_pipeline.monitoring.monitoring import FAILURE_RATE_WINDOW, failure_rate
from jobs_pipeline.operator_tools import forecast
from jobs_pipeline.redaction import redact
from jobs_pipeline.runs.status import (
    JobHistory,
    Pool,
    WaitingRun,
    daemon_heartbeat_ages,
    job_history,
    job_pools,
    read_pools,
    recorded_result,
    run_seconds,
    waiting_runs,
)
from jobs_pipeline.storage.outbox import outbox_backlog, outbox_held
from jobs_pipeline.tags import GUARD_REFUSED_TAG, forecast_abnormal_tag

log = logging.getLogger("jobs_pipeline.metrics")

PREFIX = "jobs_pipeline_"
DAGSTER_STORAGE = "dagster_storage"
APP_DATABASE = "app_database"
# Prometheus gives up on a scrape after 10 s by default: the app database gets half.
APP_STATEMENT_TIMEOUT_MS = 5_000
JOB = "job_name"

# Each job's result, whose counts are exported (`metric_items`) as `item` labels.
RESULT_TYPES: Mapping[str, type[JobResult]] = {
    tier_expiration.JOB_NAME: tier_expiration.TierExpirationResult,
    global_override_check.JOB_NAME: global_override_check.OverrideCheckResult,
    promo_cleanup.JOB_NAME: promo_cleanup.PromoCleanupResult,
    discipline_stats_rollup.JOB_NAME: discipline_stats_rollup.RollupResult,
    trial_reminder.JOB_NAME: trial_reminder.TrialReminderResult,
    email_delivery.JOB_NAME: email_delivery.EmailDeliveryResult,
    history_retention.JOB_NAME: history_retention.HistoryRetentionResult,
}
RUN_STATUSES = tuple(status.value for status in dg.DagsterRunStatus)


# -- what is watched, from the definitions ----------------------------------------------------


@dataclass(frozen=True)
class Catalogue:
    """The jobs users run by name and their schedules, the pools they write, and the jobs
    tonight's forecast foresees: read once from the definitions, not at every scrape.
    """

    jobs: tuple[str, ...]
    schedules: Mapping[str, dg.ScheduleDefinition]
    pools: tuple[str, ...]
    forecast_jobs: tuple[str, ...]

    @classmethod
    def of(cls, defs: dg.Definitions) -> Catalogue:
        every_job = defs.resolve_all_job_defs()
        return cls(
            jobs=tuple(sorted(job.name for job in every_job if is_maintenance_job(job))),
            schedules=schedules_by_job(defs),
            pools=tuple(job_pools(every_job)),
            forecast_jobs=tuple(schedule.job_name for schedule, _rule in forecast.RULES),
        )


@dataclass(frozen=True)
class Scrape:
    instance: dg.DagsterInstance
    app_engine: Engine
    catalogue: Catalogue
    now: float  # epoch seconds


def gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, labels=list(labels))


def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
    """Exposed as `<name>_total`."""
    return CounterMetricFamily(PREFIX + name, documentation, labels=list(labels))


# -- each job: its last runs, its result, its refusals, its failure ratio ---------------------


@dataclass(frozen=True)
class JobReading:
    history: JobHistory
    result: Mapping[str, Any] | None  # the last success's
    refusals: int
    failed: int  # in the trailing 24 hours
    finished: int


def read_job(instance: dg.DagsterInstance, job: str, now: float) -> JobReading:
    history = job_history(instance, job)
    success = history.last_success
    refused = dg.RunsFilter(job_name=job, tags={GUARD_REFUSED_TAG: "true"})
    since = datetime.fromtimestamp(now, UTC) - FAILURE_RATE_WINDOW
    failed, finished = failure_rate(instance, job, since)
    return JobReading(
        history=history,
        result=recorded_result(instance, success.dagster_run.run_id) if success else None,
        refusals=instance.get_runs_count(refused),
        failed=failed,
        finished=finished,
    )


def job_metrics(scrape: Scrape) -> list[Metric]:
    readings = {job: read_job(scrape.instance, job, scrape.now) for job in scrape.catalogue.jobs}
    return [
        last_success_family(readings),
        overdue_after_family(scrape.catalogue),
        last_status_family(readings),
        last_duration_family(readings),
        result_items_family(readings),
        refusals_family(readings),
        failure_ratio_family(readings),
    ]


def last_success_family(readings: Mapping[str, JobReading]) -> Metric:
    family = gauge(
        "job_last_success_timestamp_seconds",
        "When the job's last real (not dry) run that succeeded ended; absent before the first.",
        [JOB],
    )
    for job, reading in readings.items():
        success = reading.history.last_success
        if success is not None and success.end_time is not None:
            family.add_metric([job], success.end_time)
    return family


def overdue_after_family(catalogue: Catalogue) -> Metric:
    family = gauge(
        "job_success_overdue_after_seconds",
        "How long after its last success a scheduled job's next one is overdue: its"
        " schedule's interval plus the larger of half of it and 15 minutes.",
        [JOB],
    )
    for job in catalogue.jobs:
        if job in catalogue.schedules:
            family.add_metric([job], success_overdue_after(catalogue.schedules[job]))
    return family


def last_status_family(readings: Mapping[str, JobReading]) -> Metric:
    family = gauge(
        "job_last_run_status",
        "The Dagster status of the job's last real (not dry) run: 1 for its status, 0 for"
        " the others; absent before the first run.",
        [JOB, "status"],
    )
    for job, reading in readings.items():
        last = reading.history.last_run
        if last is None:
            continue
        for status in RUN_STATUSES:
            family.add_metric([job, status], 1.0 if last.dagster_run.status.value == status else 0)
    return family


def last_duration_family(readings: Mapping[str, JobReading]) -> Metric:
    family = gauge(
        "job_last_run_duration_seconds",
        "How long the job's last real run took, from its start to its end; absent while it"
        " has not ended.",
        [JOB],
    )
    for job, reading in readings.items():
        last = reading.history.last_run
        seconds = run_seconds(last) if last is not None else None
        if seconds is not None:
            family.add_metric([job], seconds)
    return family


def result_items_family(readings: Mapping[str, JobReading]) -> Metric:
    family = gauge(
        "job_last_success_items",
        "What the job's last successful real run counted, from its result: users_downgraded,"
        " codes_deactivated, rows_written (the rollup), emails_sent, override_cleared, ...",
        [JOB, "item"],
    )
    for job, reading in readings.items():
        for item, value in result_items(job, reading.result or {}).items():
            family.add_metric([job, item], value)
    return family


def result_items(job: str, result: Mapping[str, Any]) -> dict[str, float]:
    """A real run's result's counts by their metric names, read through the job's result
    model; none for a result of another shape (an older version's).
    """
    result_type = RESULT_TYPES.get(job)
    if not result or result_type is None:
        return {}
    try:
        return result_type.model_validate(result).metric_items()
    except ValidationError:
        log.warning("metrics: the last result of %s has another shape; its counts left out", job)
        return {}


def refusals_family(readings: Mapping[str, JobReading]) -> Metric:
    family = counter(
        "guard_refusals",
        "Runs of the job its blast-radius guard stopped before writing (tag"
        f" {GUARD_REFUSED_TAG}), over the runs the instance keeps.",
        [JOB],
    )
    for job, reading in readings.items():
        family.add_metric([job], reading.refusals)
    return family


def failure_ratio_family(readings: Mapping[str, JobReading]) -> Metric:
    family = gauge(
        "job_failure_ratio",
        "Failed over finished (succeeded or failed) runs of the job created in the trailing"
        " 24 hours; absent when none finished.",
        [JOB],
    )
    for job, reading in readings.items():
        if reading.finished:
            family.add_metric([job], reading.failed / reading.finished)
    return family


# -- the queue, runs in progress, the pools ---------------------------------------------------


def queue_metrics(scrape: Scrape) -> list[Metric]:
    instance, now, jobs = scrape.instance, scrape.now, scrape.catalogue.jobs
    pools = read_pools(instance, scrape.catalogue.pools)
    waiting = waiting_runs(instance, pools, now)
    started = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    return [
        queued_family(waiting, jobs),
        oldest_queued_family(waiting, now),
        oldest_waiting_family(waiting, jobs, now),
        oldest_running_family(started, jobs, now),
        pool_slots_family(pools),
        pool_held_family(pools),
    ]


def is_queued(waiting: WaitingRun) -> bool:
    return waiting.run.status == dg.DagsterRunStatus.QUEUED


def queued_family(waiting: Sequence[WaitingRun], jobs: Sequence[str]) -> Metric:
    family = gauge("runs_queued", "The job's runs in Dagster's queue (QUEUED).", [JOB])
    counts = Counter(w.run.job_name for w in waiting if is_queued(w))
    for job in jobs:
        family.add_metric([job], counts[job])
    return family


def oldest_queued_family(waiting: Sequence[WaitingRun], now: float) -> Metric:
    family = gauge(
        "oldest_queued_run_age_seconds",
        "How long the run queued longest (any job, a backfill's too) has been queued; 0 when"
        " the queue is empty.",
    )
    family.add_metric([], max((w.waited(now) for w in waiting if is_queued(w)), default=0.0))
    return family


def oldest_waiting_family(waiting: Sequence[WaitingRun], jobs: Sequence[str], now: float) -> Metric:
    family = gauge(
        "oldest_waiting_run_age_seconds",
        "How long the job's longest-waiting run has waited for its turn: queued, or started"
        " with its step waiting for its pool's slot; 0 when none waits.",
        [JOB],
    )
    for job in jobs:
        ages = [w.waited(now) for w in waiting if w.run.job_name == job]
        family.add_metric([job], max(ages, default=0.0))
    return family


def oldest_running_family(
    started: Iterable[dg.RunRecord], jobs: Sequence[str], now: float
) -> Metric:
    family = gauge(
        "oldest_running_run_age_seconds",
        "How long the job's longest-running run (STARTED) has been going; 0 when none is.",
        [JOB],
    )
    ages: dict[str, float] = {}
    for record in started:
        job = record.dagster_run.job_name
        if record.start_time is not None:
            ages[job] = max(ages.get(job, 0.0), now - record.start_time)
    for job in jobs:
        family.add_metric([job], ages.get(job, 0.0))
    return family


def pool_slots_family(pools: Sequence[Pool]) -> Metric:
    family = gauge(
        "pool_slots",
        "The concurrency pool's limit: how many steps may write its table at once.",
        ["pool"],
    )
    for pool in pools:
        if pool.limit is not None:
            family.add_metric([pool.name], pool.limit)
    return family


def pool_held_family(pools: Sequence[Pool]) -> Metric:
    family = gauge(
        "pool_slots_held",
        "Slots of the pool held, by run: its id, job and status (`gone` for a run no longer"
        " in the instance). A slot held by an ended run keeps every later writer waiting.",
        ["pool", "run_id", JOB, "run_status"],
    )
    held = Counter(
        (
            slot.pool,
            slot.run_id,
            slot.run.job_name if slot.run else "",
            slot.run.status.value if slot.run else "gone",
        )
        for pool in pools
        for slot in pool.held
    )
    for labels, slots in sorted(held.items()):
        family.add_metric(list(labels), slots)
    return family


# -- the daemon, the forecast -----------------------------------------------------------------


def daemon_metrics(scrape: Scrape) -> list[Metric]:
    family = gauge(
        "daemon_heartbeat_age_seconds",
        "Seconds since the daemon's last heartbeat, per daemon type the instance requires"
        " (+Inf for one never seen); a running daemon beats about every 30 s.",
        ["daemon"],
    )
    for daemon, seconds in sorted(daemon_heartbeat_ages(scrape.instance, scrape.now).items()):
        family.add_metric([daemon], seconds)
    return [family]


def forecast_metrics(scrape: Scrape) -> list[Metric]:
    instance, jobs = scrape.instance, scrape.catalogue.forecast_jobs
    total = counter(
        "forecast_abnormal",
        "Tonight's forecasts (runs of tonight_forecast) that found the job's next run"
        " abnormal: over its learned bound or a fixed cap, or bound to fail.",
        [JOB],
    )
    for job in jobs:
        abnormal = dg.RunsFilter(
            job_name=forecast.JOB_NAME, tags={forecast_abnormal_tag(job): "true"}
        )
        total.add_metric([job], instance.get_runs_count(abnormal))
    return [total, *latest_forecast_families(instance, jobs)]


def latest_forecast_families(instance: dg.DagsterInstance, jobs: Sequence[str]) -> list[Metric]:
    verdict = gauge(
        "forecast_latest_abnormal",
        "Whether the latest forecast found the job's next run abnormal (1) or normal (0);"
        " absent before the first forecast.",
        [JOB],
    )
    when = gauge("forecast_latest_timestamp_seconds", "When the latest forecast run was created.")
    latest = latest_forecast(instance, jobs)
    if latest is not None:
        tags = latest.dagster_run.tags
        for job in jobs:
            if forecast_abnormal_tag(job) in tags:
                verdict.add_metric([job], 1.0 if tags[forecast_abnormal_tag(job)] == "true" else 0)
        when.add_metric([], latest.create_timestamp.timestamp())
    return [verdict, when]


def latest_forecast(instance: dg.DagsterInstance, jobs: Sequence[str]) -> dg.RunRecord | None:
    """The newest forecast run that gave its verdicts (all are tagged at once); one that
    failed before it could (the app database down) is passed over.
    """
    if not jobs:
        return None
    made = dg.RunsFilter(
        job_name=forecast.JOB_NAME, tags={forecast_abnormal_tag(jobs[0]): ["true", "false"]}
    )
    records = instance.get_run_records(made, limit=1)
    return records[0] if records else None


# -- the app database: the email outbox -------------------------------------------------------


def outbox_metrics(scrape: Scrape) -> list[Metric]:
    with scrape.app_engine.begin() as connection:
        connection.execute(
            select(func.set_config("statement_timeout", str(APP_STATEMENT_TIMEOUT_MS), True))
        )
        held = outbox_held(connection)
        backlog = outbox_backlog(connection)
    messages = gauge(
        "email_outbox_messages",
        "Emails in the outbox by status (every status but sent, which is history).",
        ["status"],
    )
    for status, count in held.items():
        messages.add_metric([status], count)
    due = gauge("email_outbox_due_messages", "Pending emails whose time to be sent has come.")
    due.add_metric([], backlog.due)
    oldest = gauge(
        "email_outbox_oldest_pending_age_seconds",
        "How long the longest-due pending email has waited past its due time; 0 when none is due.",
    )
    oldest.add_metric([], backlog.oldest_due_seconds)
    return [messages, due, oldest]


# -- the collector ----------------------------------------------------------------------------

Reader = Callable[[Scrape], list[Metric]]

SOURCES: tuple[tuple[str, tuple[Reader, ...]], ...] = (
    (DAGSTER_STORAGE, (daemon_metrics, job_metrics, queue_metrics, forecast_metrics)),
    (APP_DATABASE, (outbox_metrics,)),
)


def read_source(
    scrape: Scrape, source: str, readers: Sequence[Reader]
) -> tuple[list[Metric], bool]:
    """What the source's readers gave, and whether all of them could read it. After a
    failure the rest are skipped: a storage that is down is not asked again in this scrape.
    """
    families: list[Metric] = []
    for reader in readers:
        try:
            families.extend(reader(scrape))
        except Exception as error:
            log.warning(
                "metrics: %s could not be read (%s): %s: %s",
                source,
                reader.__name__,
                type(error).__name__,
                redact(first_line(error)),
            )
            return families, False
    return families, True


def source_up_family(up: Mapping[str, bool]) -> Metric:
    family = gauge(
        "source_up",
        "Whether this scrape could read the source (1) or not (0): Dagster's storage, or the"
        " app database; a source that is down leaves out its metrics.",
        ["source"],
    )
    for source, readable in up.items():
        family.add_metric([source], 1.0 if readable else 0.0)
    return family


class PipelineCollector(Collector):
    """Every metric, read afresh at each scrape; one scrape at a time."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        app_engine: Engine,
        defs: dg.Definitions,
        clock: Callable[[], float] = time.time,
    ):
        self.instance = instance
        self.app_engine = app_engine
        self.catalogue = Catalogue.of(defs)
        self.clock = clock
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            scrape = Scrape(self.instance, self.app_engine, self.catalogue, self.clock())
            up: dict[str, bool] = {}
            families: list[Metric] = []
            for source, readers in SOURCES:
                read, up[source] = read_source(scrape, source, readers)
                families.extend(read)
        yield source_up_family(up)
        yield from families


def metrics_registry(
    instance: dg.DagsterInstance, app_engine: Engine, defs: dg.Definitions
) -> CollectorRegistry:
    """A registry of its own holding only the collector: no process metrics of whichever
    server serves it, so the admin API's and the metrics server's answers are the same.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(instance, app_engine, defs))
    return registry


def serve(
    registry: CollectorRegistry, host: str, port: int, ready: Callable[[str], object]
) -> None:
    """Serves the registry over HTTP until interrupted (Ctrl-C, or SIGTERM, which the
    command line turns into the same), then stops listening before it returns.
    """
    server, thread = start_http_server(port, addr=host, registry=registry)
    try:
        ready(f"http://{host}:{server.server_port}/metrics")
        threading.Event().wait()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
