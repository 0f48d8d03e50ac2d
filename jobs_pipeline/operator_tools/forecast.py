"""tonight-forecast: what tonight's runs would change, and whether that is normal (22:00 UTC).

Otherwise an operator learns what tier-expiration does only when it runs, at 00:15.
Each evening this job takes every scheduled job whose rule depends on the time, finds
the job's next tick, and evaluates the job's own rule as of that tick, as its dry run
would (`--dry-run --as-of TICK`): on the data as it is now, so rows that expire before
the tick are counted and what the app changes in between is not foreseen. Each count
is compared with the job's learned normal (`normal.learned_normal`, from its last
successful scheduled runs) and with the job's fixed blast-radius caps.

The forecast is recorded where operators look: the run's output metadata, one key per
job and count (`tier_expiration.processed.forecast`, `.median`, `.p95`, `.bound`), and
one log line per job. An abnormal forecast (over the learned bound, or over a fixed cap
so the run would stop) alerts on the configured channels once per job and tick: the
forecast run records each delivery as a run tag whose value is the tick, so a second
forecast for the same tick sends nothing more.

It writes nothing and takes no writer lock. It is a tool, not a maintenance job:
`jobs-pipeline run`, `list` and the admin API keep to the six jobs.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import dagster as dg

from jobs_pipeline.formats import display_name, iso_utc
from jobs_pipeline.job_parts.guard import Change, Learned, blast_radius_refusal, number
from jobs_pipeline.job_parts.learned_normal import Normal
from jobs_pipeline.job_parts.results import JobReport, JobResult, ResultJson
from jobs_pipeline.job_parts.scheduling import job_tags, next_tick, utc_schedule
from jobs_pipeline.jobs import (
    global_override_check,
    promo_cleanup,
    tier_expiration,
    trial_reminder,
)
from jobs_pipeline.resources.alerting import Alert, AlertChannels, deliver
from jobs_pipeline.resources.database import AppDatabase
from jobs_pipeline.tags import TOOL_TAG, alerted_tag, forecast_abnormal_tag

JOB_NAME = "tonight_forecast"
OP_NAME = "forecast_tonight"
ALERT_KIND = "forecast abnormal"
# Forecast runs read back for deliveries already made for a tick: the furthest tick
# forecast (promo-cleanup's, weekly) is under seven days ahead.
DELIVERED_HORIZON = timedelta(days=8)


@dataclass(frozen=True)
class Count:
    """One number the job's dry run would report at its tick, beside the job's normal."""

    learned: Learned  # the job's guard settings (the defaults for a job without a guard)
    what: str  # "downgrade {} users"
    would: int
    over_cap: str | None = None  # the fixed caps' refusal, when the run would meet it
    normal: Normal | None = None

    @property
    def over_bound(self) -> bool:
        bound = self.normal.bound if self.normal else None
        return bound is not None and self.would > bound

    def describe(self) -> str:
        """`downgrade 3000 users (normal: median 300, p95 320, bound 960 over 30 runs)`."""
        return f"{self.what.format(self.would)} ({describe_normal(self.normal)})"

    def reasons(self) -> list[str]:
        """Over the learned bound, over a fixed cap: each says so with its numbers."""
        found = []
        if self.normal is not None and self.over_bound:
            found.append(f"{self.would} is over the learned bound of {self.normal.bound}")
        if self.over_cap is not None:
            found.append(f"its guard would stop the run: {first_sentence(self.over_cap)}")
        return found


@dataclass(frozen=True)
class Forecast:
    """What one job would do at its next tick, and why that is abnormal, if it is."""

    job: str
    tick: datetime
    counts: tuple[Count, ...] = ()
    note: str = ""  # what the rule foresees beyond counts (the override's fate)
    failure: str | None = None  # why the run would fail whatever its counts

    def reasons(self) -> list[str]:
        """Why it is abnormal: counts over their learned bound or a fixed cap, a failure."""
        found = [reason for count in self.counts for reason in count.reasons()]
        return found + ([self.failure] if self.failure else [])

    @property
    def abnormal(self) -> bool:
        return bool(self.reasons())

    @property
    def command(self) -> str:
        return f"jobs-pipeline run {display_name(self.job)} --dry-run --as-of {iso_utc(self.tick)}"

    def summary(self) -> str:
        """What the run would do: each count against its normal, or the rule's note."""
        done = "; ".join(f"would {count.describe()}" for count in self.counts)
        return "; ".join(part for part in (done, self.note) if part)

    def line(self) -> str:
        """The log's one line for the job, ending `: ABNORMAL` or `: normal`."""
        verdict = "ABNORMAL" if self.abnormal else "normal"
        return f"{display_name(self.job)} at {iso_utc(self.tick)}: {self.summary()}: {verdict}"

    def headline(self) -> str:
        """The alert's text: the numbers, why they are abnormal, and the command to look closer."""
        return (
            f"next run {iso_utc(self.tick)}: {self.summary()}. {'; '.join(self.reasons())}."
            f" Look closer: {self.command}"
        )


def describe_normal(normal: Normal | None) -> str:
    if normal is None:
        return "no normal learned"
    if normal.bound is None:
        return f"normal: not learned yet, {normal.runs} runs recorded"
    return (
        f"normal: median {number(normal.median)}, p95 {number(normal.p95)},"
        f" bound {normal.bound} over {normal.runs} runs"
    )


def first_sentence(text: str) -> str:
    """A guard's refusal goes on to say how to go ahead anyway: the alert wants its numbers."""
    return text.split(". ", 1)[0].rstrip(".")


# -- each job's rule, as of its tick -------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """A rule's answer as of a tick, before it is compared with the job's normal."""

    counts: tuple[Count, ...] = ()
    note: str = ""
    failure: str | None = None


def guarded(what: str, change: Change) -> Count:
    """A count its job's guard checks: the same fixed caps, and the same learned settings."""
    return Count(
        learned=change.learned,
        what=what,
        would=change.about_to_change,
        over_cap=blast_radius_refusal(change.caps, change.about_to_change, change.out_of),
    )


def predict_tier_expiration(db: AppDatabase, tick: datetime) -> Prediction:
    """Paid tiers expired by the tick, against the guard a scheduled run would meet."""
    config = tier_expiration.TierExpirationConfig()
    with db.transaction() as connection:
        found = tier_expiration.count_expired(connection, tick)
        paying = tier_expiration.count_paying(connection)
    change = Change(
        tier_expiration.caps_of(config),
        tier_expiration.learned_of(config),
        about_to_change=found,
        out_of=paying,
    )
    return Prediction(counts=(guarded("downgrade {} users", change),))


def predict_promo_cleanup(db: AppDatabase, tick: datetime) -> Prediction:
    """Codes expired and redemptions past retention by the tick, against the job's guards."""
    config = promo_cleanup.PromoCleanupConfig()
    cutoff = tick - timedelta(days=config.redemption_retention_days)
    codes, redemptions = promo_cleanup.changes(
        config, promo_cleanup.count_pending(db, tick, cutoff)
    )
    return Prediction(
        counts=(
            guarded("deactivate {} codes", codes),
            guarded("delete {} redemptions", redemptions),
        )
    )


def predict_trial_reminder(db: AppDatabase, tick: datetime) -> Prediction:
    """Reminders due at the tick that were not queued before (the job has no guard: its
    counts are compared with a normal of the default settings).
    """
    with db.transaction() as connection:
        three_days, one_day = trial_reminder.count_unqueued(connection, tick)
    result = trial_reminder.TrialReminderResult
    return Prediction(
        counts=(
            Count(Learned(result, "queued3d"), "queue {} 3-day reminders", three_days),
            Count(Learned(result, "queued1d"), "queue {} 1-day reminders", one_day),
        )
    )


def predict_global_override_check(db: AppDatabase, tick: datetime) -> Prediction:
    """The override's fate at the tick; a value the job cannot read would fail its run."""
    with db.transaction() as connection:
        exists, value = global_override_check.read_override(connection)
    if not exists:
        return Prediction(note="no override to clear")
    try:
        override = global_override_check.parse_override(value)
    except global_override_check.MalformedOverride as fault:
        key = global_override_check.OVERRIDE_KEY
        return Prediction(
            note="its override cannot be read",
            failure=f"the run would fail: global_config key '{key}' is malformed: {fault}",
        )
    if override.expires_at < tick:
        return Prediction(
            note=f"would clear the {override.tier} override (expires {override.expires_at_text})"
        )
    return Prediction(note=f"the {override.tier} override stays (until {override.expires_at_text})")


Rule = Callable[[AppDatabase, datetime], Prediction]

# The scheduled jobs whose rule depends on the time, each with its rule as of a tick.
RULES: tuple[tuple[dg.ScheduleDefinition, Rule], ...] = (
    (tier_expiration.tier_expiration_schedule, predict_tier_expiration),
    (global_override_check.global_override_check_schedule, predict_global_override_check),
    (promo_cleanup.promo_cleanup_schedule, predict_promo_cleanup),
    (trial_reminder.trial_reminder_schedule, predict_trial_reminder),
)


def forecast(
    instance: dg.DagsterInstance,
    db: AppDatabase,
    schedule: dg.ScheduleDefinition,
    rule: Rule,
    now: datetime,
) -> Forecast:
    tick = next_tick(schedule, now)
    prediction = rule(db, tick)
    counts = tuple(
        replace(count, normal=normal_of(instance, schedule.job_name, count))
        for count in prediction.counts
    )
    return Forecast(
        job=schedule.job_name,
        tick=tick,
        counts=counts,
        note=prediction.note,
        failure=prediction.failure,
    )


def normal_of(instance: dg.DagsterInstance, job_name: str, count: Count) -> Normal:
    """With the job guard's own settings where it has a guard, so "abnormal" means "the
    guard would stop it"; with the defaults otherwise.
    """
    return count.learned.normal(instance, job_name)


class CountForecast(JobResult):
    """One count a job's run would make tonight, beside the job's normal."""

    forecast: int
    median: float | None
    p95: float | None
    bound: int | None


class JobForecast(JobResult):
    tick: str
    abnormal: bool
    summary: str
    counts: dict[str, CountForecast]  # by the key of the job's result counted


class ForecastResult(JobResult):
    """In the JSON, flat keys, one per job and number (`tier_expiration.tick`,
    `tier_expiration.processed.forecast`, ...), so the UI shows each as its own metadata
    entry.
    """

    timestamp: str
    abnormal: list[str]
    jobs: dict[str, JobForecast]

    def as_json(self) -> ResultJson:
        flat: ResultJson = {"timestamp": self.timestamp, "abnormal": self.abnormal}
        for job, forecast in self.jobs.items():
            flat[f"{job}.tick"] = forecast.tick
            flat[f"{job}.abnormal"] = forecast.abnormal
            flat[f"{job}.summary"] = forecast.summary
            for key, count in forecast.counts.items():
                for figure, value in count.model_dump().items():
                    flat[f"{job}.{key}.{figure}"] = value
        return flat


def forecast_result(forecasts: Sequence[Forecast], now: datetime) -> ForecastResult:
    return ForecastResult(
        timestamp=iso_utc(now),
        abnormal=[f.job for f in forecasts if f.abnormal],
        jobs={
            f.job: JobForecast(
                tick=iso_utc(f.tick),
                abnormal=f.abnormal,
                summary=f.summary(),
                counts={count.learned.key: count_forecast(count) for count in f.counts},
            )
            for f in forecasts
        },
    )


def count_forecast(count: Count) -> CountForecast:
    normal = count.normal
    return CountForecast(
        forecast=count.would,
        median=normal.median if normal else None,
        p95=normal.p95 if normal else None,
        bound=normal.bound if normal else None,
    )


def verdict_tags(forecasts: Sequence[Forecast]) -> dict[str, str]:
    return {forecast_abnormal_tag(f.job): "true" if f.abnormal else "false" for f in forecasts}


# -- alerts, once per job and tick ---------------------------------------------------------


def delivery_tag(job: str, channel: str) -> str:
    """`jobs_pipeline/alerted_forecast_tier_expiration_email`, whose value is the tick."""
    return alerted_tag(f"forecast {job}", channel)


@dataclass
class Deliveries:
    """Which channels already carried a job's forecast alert for a tick, across forecast runs."""

    instance: dg.DagsterInstance
    run_id: str
    earlier: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def read(cls, instance: dg.DagsterInstance, run_id: str, now: datetime) -> "Deliveries":
        records = instance.get_run_records(
            filters=dg.RunsFilter(job_name=JOB_NAME, created_after=now - DELIVERED_HORIZON)
        )
        return cls(instance, run_id, [dict(record.dagster_run.tags) for record in records])

    def done(self, f: Forecast, channels: Iterable[str]) -> set[str]:
        tick = iso_utc(f.tick)
        return {
            channel
            for channel in channels
            if any(tags.get(delivery_tag(f.job, channel)) == tick for tags in self.earlier)
        }

    def recorder(self, f: Forecast) -> Callable[[str], None]:
        def record(channel: str) -> None:
            tags = {delivery_tag(f.job, channel): iso_utc(f.tick)}
            self.instance.add_run_tags(self.run_id, tags)

        return record


def alert_abnormal(
    context: dg.OpExecutionContext,
    alerts: AlertChannels,
    forecasts: Sequence[Forecast],
    now: datetime,
) -> list[str]:
    """Alerts each abnormal forecast on the channels it has not reached for its tick yet.

    Returns `job: channel` for each delivery that failed (a later forecast run for the
    same tick tries that channel again; the others keep what they got).
    """
    deliveries = Deliveries.read(context.instance, context.run_id, now)
    failed: list[str] = []
    for f in forecasts:
        if not f.abnormal:
            continue
        alert = Alert(
            kind=ALERT_KIND,
            job_name=f.job,
            headline=f.headline(),
            at=now,
            link=alerts.run_link(context.run_id),
            run_id=context.run_id,
        )
        done = deliveries.done(f, ["log", *alerts.configured()])
        record = deliveries.recorder(f)
        down = deliver(alert, alerts, context.log.warning, delivered=done, record=record)
        failed.extend(f"{display_name(f.job)}: {channel}" for channel in down)
    return failed


@dg.op(name=OP_NAME)
def forecast_tonight(
    context: dg.OpExecutionContext, db: AppDatabase, alerts: AlertChannels
) -> dg.Output[ResultJson]:
    """Dry-runs each time-ruled job's rule as of its next tick and compares each count with
    the job's learned normal (median, 95th percentile, bound from its last 30 successful
    scheduled runs) and its fixed caps; an abnormal forecast alerts once per job and tick.
    Writes nothing.
    """
    report = JobReport(context, display_name(JOB_NAME))
    with db.retry_on_connection_loss():
        now = db.now()
        forecasts = [forecast(context.instance, db, s, rule, now) for s, rule in RULES]
    for f in forecasts:
        report.info(f.line())
    # Before the alerts: a run whose alerts could not all be delivered still says what it saw.
    context.instance.add_run_tags(context.run_id, verdict_tags(forecasts))
    failed = alert_abnormal(context, alerts, forecasts, now)
    result = forecast_result(forecasts, now)
    if failed:
        report.log_result(result)
        # A forecast nobody heard of is no forecast: the run fails, so the failure alert
        # goes out, and a re-run (the Launchpad) delivers only what is missing.
        raise dg.Failure(
            description=(
                f"Forecast alerts could not be delivered ({', '.join(failed)}); launch"
                f" {JOB_NAME} again to deliver them there"
            ),
            allow_retries=False,
        )
    return report.result(result)


@dg.job(
    name=JOB_NAME,
    description=(
        "Tonight's forecast: each time-ruled job dry-run as of its next tick, against its"
        " learned normal; alerts when abnormal (daily 22:00 UTC)."
    ),
    tags={**job_tags(JOB_NAME, "low"), TOOL_TAG: "true"},
)
def tonight_forecast_job() -> None:
    forecast_tonight()


tonight_forecast_schedule = utc_schedule(tonight_forecast_job, "0 22 * * *")
