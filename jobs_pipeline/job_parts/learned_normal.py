"""Each job's normal, learned from its own history in Dagster's run storage.

Fixed caps are blind in both directions: 9,000 downgrades pass on a day the job
usually makes 300, and a legitimate month-end spike can be refused. What a job
changed in its last scheduled runs says what tonight should look like: the learned
bound is the larger of k times the trailing 95th percentile and a small floor (so a
job that usually changes 2 rows may still change 40). The guard stops a run over it;
the evening forecast compares tomorrow's dry runs with it.

Only successful scheduled runs count (tag `dagster/schedule_name`): a manual catch-up
or an operator's `--allow-large` run is not the job's rhythm, and a dry run changed
nothing. Each run's count is read from the `result` metadata its step recorded, the
same place the CLI, the admin API and the UI read it.
"""

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import dagster as dg
from pydantic import ValidationError

from jobs_pipeline.job_parts.results import JobResult, result_of
from jobs_pipeline.tags import DRY_RUN_TAG, SCHEDULE_TAG

DEFAULT_K = 3.0
DEFAULT_FLOOR = 50
DEFAULT_WINDOW = 30
DEFAULT_MIN_RUNS = 5
# Runs read per page of the run storage, and at most in all: history older than a
# thousand runs of one job says little about tonight.
PAGE_SIZE = 100
MAX_RUNS_SCANNED = 1_000


@dataclass(frozen=True)
class Normal:
    job: str  # Dagster job name
    metric: str  # the result's key counted, as its JSON names it, e.g. "codesDeactivated"
    counts: tuple[int, ...]  # that key in each of the last successful scheduled runs, newest first
    median: float | None
    p95: float | None
    bound: int | None  # None while fewer than min_runs runs: the fixed caps alone apply

    @property
    def runs(self) -> int:
        return len(self.counts)


def learned_bound(
    counts: Sequence[int], *, k: float, floor: int, min_runs: int
) -> tuple[float | None, float | None, int | None]:
    """(median, 95th percentile, bound) of `counts`; no bound below `min_runs` counts,
    where a percentile of a handful would be noise.
    """
    # pandas takes a while to import: only a run that reads its history pays for it, not
    # every process that loads the definitions.
    import pandas as pd

    if not counts:
        return None, None, None
    series = pd.Series(list(counts), dtype="float64")
    median, p95 = float(series.median()), float(series.quantile(0.95))
    if len(counts) < min_runs:
        return median, p95, None
    # Rounded first, so float dust (300.00000000000006) does not add a row to the bound.
    return median, p95, max(math.ceil(round(k * p95, 6)), floor)


def learned_normal(
    instance: dg.DagsterInstance,
    job_name: str,
    result_type: type[JobResult],
    metric: str,
    *,
    k: float = DEFAULT_K,
    floor: int = DEFAULT_FLOOR,
    window: int = DEFAULT_WINDOW,
    min_runs: int = DEFAULT_MIN_RUNS,
) -> Normal:
    """`metric` over the job's last `window` successful scheduled runs, and its bound."""
    counts = tuple(scheduled_counts(instance, job_name, result_type, metric, window))
    median, p95, bound = learned_bound(counts, k=k, floor=floor, min_runs=min_runs)
    return Normal(job_name, result_key(result_type, metric), counts, median, p95, bound)


def result_key(result_type: type[JobResult], field: str) -> str:
    """How a result's JSON names one of its fields: `codes_deactivated` is `codesDeactivated`."""
    info = result_type.model_fields[field]
    return info.serialization_alias or info.alias or field


def scheduled_counts(
    instance: dg.DagsterInstance,
    job_name: str,
    result_type: type[JobResult],
    metric: str,
    window: int,
) -> Iterator[int]:
    """`metric` of each successful, scheduled, real run of the job, newest first, up to
    `window` of them; a run whose result lacks the metric (an older version) is passed over.
    """
    found = 0
    for run in successful_runs(instance, job_name):
        if SCHEDULE_TAG not in run.tags or run.tags.get(DRY_RUN_TAG) == "true":
            continue
        count = run_count(instance, run.run_id, result_type, metric)
        if count is None:
            continue
        yield count
        found += 1
        if found >= window:
            return


def successful_runs(instance: dg.DagsterInstance, job_name: str) -> Iterator[dg.DagsterRun]:
    """The job's successful runs, newest first, page by page. Dagster filters tags only
    by value, so whether a run was scheduled is read from each run's tags here.
    """
    filters = dg.RunsFilter(job_name=job_name, statuses=[dg.DagsterRunStatus.SUCCESS])
    cursor: str | None = None
    scanned = 0
    while scanned < MAX_RUNS_SCANNED:
        page = instance.get_runs(filters=filters, cursor=cursor, limit=PAGE_SIZE)
        yield from page
        scanned += len(page)
        if len(page) < PAGE_SIZE:
            return
        cursor = page[-1].run_id


def run_count(
    instance: dg.DagsterInstance, run_id: str, result_type: type[JobResult], metric: str
) -> int | None:
    """`metric` in the result the run's step recorded with its output, read through the
    job's result model: a result of another shape (an older version's) counts as none.
    """
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_OUTPUT).records
    result = result_of(
        record.event_log_entry.dagster_event
        for record in records
        if record.event_log_entry.dagster_event is not None
    )
    if result is None:
        return None
    try:
        value = getattr(result_type.model_validate(result), metric)
    except ValidationError:
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
