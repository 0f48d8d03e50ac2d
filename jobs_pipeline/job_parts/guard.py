"""The blast-radius guard: a job about to change too many rows stops before writing.

A clock set wrong, or a bad bulk import in the app, would otherwise let
tier-expiration downgrade every paying user at midnight. Above a cap the run fails
(and so alerts) having written nothing; after looking, an operator re-runs it with
`allow_large` (`jobs-pipeline run JOB --allow-large`).

Two guards, both before writing: the fixed caps (a number of rows and a share),
the outer bound whatever the history; and the learned bound (`learned_normal.py`), which
knows that a job making 300 changes a night should not make 3,000. A dry run never
fails on either: it logs what a real run would meet, so an operator (or the evening
forecast) can look before the run, at a chosen time (`as_of`).
"""

from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from jobs_pipeline.job_parts.learned_normal import (
    DEFAULT_FLOOR,
    DEFAULT_K,
    DEFAULT_MIN_RUNS,
    DEFAULT_WINDOW,
    Normal,
    learned_normal,
    result_key,
)
from jobs_pipeline.job_parts.results import DryRunConfig, JobReport, JobResult

# A run the guard stopped carries this tag, so the refusals of a job can be counted from the
# run storage in one query (the Prometheus metric `jobs_pipeline_guard_refusals_total`).
from jobs_pipeline.tags import GUARD_REFUSED_TAG


class GuardConfig(dg.Config):
    allow_large: bool = Field(
        default=False,
        description="Let a run change more rows than the caps and the learned bound allow.",
    )


class LearnedGuardConfig(GuardConfig):
    """The learned bound's settings; each job adds its own floor(s)."""

    learned_k: float = Field(
        default=DEFAULT_K,
        gt=0,
        description="A run stops above this many times the 95th percentile of its past runs.",
    )
    learned_window: int = Field(
        default=DEFAULT_WINDOW, ge=1, description="Past scheduled runs the normal is learned from."
    )
    learned_min_runs: int = Field(
        default=DEFAULT_MIN_RUNS,
        ge=1,
        description="Below this many past scheduled runs, only the fixed caps apply.",
    )


# -- dry runs at a chosen time ---------------------------------------------------------------


# A rule's arithmetic (a retention of up to a century, a few days' notice) must stay
# within the dates Python and PostgreSQL can hold.
AS_OF_YEARS = (1970, 9000)


class AsOfConfig(DryRunConfig):
    """A job whose rule follows the clock can be dry-run as of another time: tonight's
    forecast asks each job what it would change at its next tick.
    """

    as_of: str | None = Field(
        default=None,
        description=(
            "Dry runs only: evaluate the rule as if the run happened at this ISO-8601 time"
            " (with an offset or Z). A real run always uses the database's clock."
        ),
    )


def parse_as_of(text: str) -> datetime:
    """ISO-8601 with an offset (or `Z`), as UTC. A time without an offset is refused: it
    would mean a different instant on each machine that reads it.
    """
    example = "e.g. 2026-12-06T02:00:00Z"
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"as_of {text!r} is not an ISO-8601 timestamp ({example})") from None
    if moment.tzinfo is None:
        raise ValueError(f"as_of {text!r} has no UTC offset: add Z or +HH:MM ({example})")
    if not AS_OF_YEARS[0] <= moment.year <= AS_OF_YEARS[1]:
        raise ValueError(
            f"as_of {text!r} is out of range: years {AS_OF_YEARS[0]} to {AS_OF_YEARS[1]}"
        )
    return moment.astimezone(UTC)


def requested_as_of(config: AsOfConfig) -> datetime | None:
    """The instant a dry run asked for; checked before the run does anything, so a bad
    value, or `as_of` on a real run, fails the run at once and changes nothing.
    """
    if config.as_of is None:
        return None
    if not config.dry_run:
        raise dg.Failure(
            description=(
                "as_of applies only to dry runs (dry_run: true, or --dry-run): a real run"
                " always uses the database's clock"
            ),
            allow_retries=False,
        )
    try:
        return parse_as_of(config.as_of)
    except ValueError as bad:
        raise dg.Failure(description=str(bad), allow_retries=False) from None


# -- the fixed caps --------------------------------------------------------------------------


@dataclass(frozen=True)
class Caps:
    """A change's two caps: a number of rows, and a share of the rows it is taken from,
    which applies only once the run would change more than `share_applies_above` rows
    (a share of a handful means little). Each names the setting that moves it.
    """

    job: str  # the job's name as users see it, for the command that goes ahead
    what: str  # "downgrade paying users"
    out_of_what: str  # "paying users"
    max_rows: int
    max_rows_setting: str
    max_share: float
    max_share_setting: str
    share_applies_above: int


def blast_radius_refusal(caps: Caps, about_to_change: int, out_of: int) -> str | None:
    """Why a run changing `about_to_change` of `out_of` rows must stop; None when it may go."""
    if about_to_change == 0:
        return None
    share = about_to_change / out_of if out_of else 1.0
    over_rows = about_to_change > caps.max_rows
    over_share = about_to_change > caps.share_applies_above and share > caps.max_share
    if not (over_rows or over_share):
        return None
    return refusal(caps, about_to_change, out_of, share, over_rows=over_rows)


def refused(description: str, **metadata: int | float) -> dg.Failure:
    """The run's failure: final (a retry would meet the same numbers), before any write."""
    return dg.Failure(description=description, metadata=metadata, allow_retries=False)


def go_ahead(caps: Caps) -> str:
    return (
        f"run it again allowing it: jobs-pipeline run {caps.job} --allow-large"
        " (or allow_large: true in the Launchpad or the admin API's body)."
    )


def refusal(caps: Caps, about_to_change: int, out_of: int, share: float, *, over_rows: bool) -> str:
    """What the run would have done, the cap it hit, the other cap, and how to go ahead."""
    rows_cap = f"at most {caps.max_rows} rows ({caps.max_rows_setting})"
    share_cap = (
        f"at most {caps.max_share:.0%} of the {caps.out_of_what} ({caps.max_share_setting}),"
        f" once a run would change over {caps.share_applies_above} rows"
    )
    hit, other = (rows_cap, share_cap) if over_rows else (share_cap, rows_cap)
    return (
        f"Refusing to {caps.what}: this run would change {about_to_change} rows,"
        f" {share:.0%} of the {out_of} {caps.out_of_what}, over the cap of {hit}."
        f" The other cap: {other}. Nothing was changed. Check the data and the clock;"
        f" if it is right, {go_ahead(caps)}"
    )


# -- the learned bound -----------------------------------------------------------------------


@dataclass(frozen=True)
class Learned:
    """The learned bound's settings for one count a job makes."""

    result_type: type[JobResult]  # the job's real runs' result
    metric: str  # the field of that result counted, e.g. "processed"
    k: float = DEFAULT_K
    floor: int = DEFAULT_FLOOR
    floor_setting: str = "the default floor"  # the config field that moves the floor
    window: int = DEFAULT_WINDOW
    min_runs: int = DEFAULT_MIN_RUNS

    def __post_init__(self) -> None:
        """A count that is not a field of the result fails where the job is defined."""
        if self.metric not in self.result_type.model_fields:
            raise ValueError(f"{self.result_type.__name__} has no count {self.metric!r}")

    @property
    def key(self) -> str:
        """The count as the result's JSON names it: `codesDeactivated`."""
        return result_key(self.result_type, self.metric)

    def normal(self, instance: dg.DagsterInstance, job_name: str) -> Normal:
        return learned_normal(
            instance,
            job_name,
            self.result_type,
            self.metric,
            k=self.k,
            floor=self.floor,
            window=self.window,
            min_runs=self.min_runs,
        )


@dataclass(frozen=True)
class Change:
    """What a run is about to change, as both guards see it."""

    caps: Caps
    learned: Learned
    about_to_change: int
    out_of: int


def number(value: float | None) -> str:
    """300.0 as "300", 313.55 as "313.55": counts read as counts."""
    return "?" if value is None else f"{value:.2f}".rstrip("0").rstrip(".")


def learned_refusal(change: Change, normal: Normal) -> str | None:
    """Why a run over its learned bound must stop; None within it, or with no bound yet."""
    if normal.bound is None or change.about_to_change <= normal.bound:
        return None
    caps, learned = change.caps, change.learned
    return (
        f"Refusing to {caps.what}: this run would change {change.about_to_change} rows, over"
        f" the learned bound of {normal.bound}: the last {normal.runs} scheduled runs changed"
        f" a median of {number(normal.median)} and a 95th percentile of {number(normal.p95)}"
        f" ({normal.metric}); the bound is the larger of {number(learned.k)} times that"
        f" percentile (learned_k) and {learned.floor} ({learned.floor_setting}). Nothing was"
        f" changed. Look at what it would change first (jobs-pipeline run {caps.job} --dry-run);"
        f" if it is right, {go_ahead(caps)} That skips both guards."
    )


def comparison(change: Change, normal: Normal) -> str:
    """The log line saying how today's number compares with the job's normal."""
    learned = change.learned
    if normal.bound is None:
        return (
            f"Learned bound of {normal.metric}: {normal.runs} past scheduled runs, fewer than"
            f" learned_min_runs ({learned.min_runs}); only the fixed caps apply"
        )
    verdict = "over it" if change.about_to_change > normal.bound else "within it"
    return (
        f"Learned bound of {normal.metric}: {normal.bound} (median {number(normal.median)},"
        f" 95th percentile {number(normal.p95)} over the last {normal.runs} scheduled runs,"
        f" learned_k {number(learned.k)}, {learned.floor_setting} {learned.floor});"
        f" this run would change {change.about_to_change}: {verdict}"
    )


def guard_change(
    context: dg.OpExecutionContext,
    report: JobReport,
    change: Change,
    *,
    dry_run: bool,
    allow_large: bool,
) -> None:
    """Before writing: the fixed caps (the outer bound), then the learned bound, from the
    job's history in the run's instance. A real run over either fails having written
    nothing; a dry run never fails, it logs what a real run would meet.
    """
    if allow_large and not dry_run:
        report.info("allow_large: neither the fixed caps nor the learned bound apply")
        return
    normal = change.learned.normal(context.instance, context.job_name)
    report.info(comparison(change, normal))
    refusals = [
        description
        for description in (
            blast_radius_refusal(change.caps, change.about_to_change, change.out_of),
            learned_refusal(change, normal),
        )
        if description is not None
    ]
    if dry_run:
        for description in refusals:
            report.warning(f"A real run would stop here: {description}")
        return
    if refusals:
        context.instance.add_run_tags(context.run_id, {GUARD_REFUSED_TAG: "true"})
        raise refused(
            refusals[0],
            about_to_change=change.about_to_change,
            out_of=change.out_of,
            median=normal.median if normal.median is not None else -1,
            p95=normal.p95 if normal.p95 is not None else -1,
            bound=normal.bound if normal.bound is not None else -1,
            runs=normal.runs,
        )
