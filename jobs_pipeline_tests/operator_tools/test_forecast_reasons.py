"""Why a forecast is abnormal, said with its numbers: pure functions over a job's counts
and its learned normal, no database.
"""

from datetime import UTC, datetime

from jobs_pipeline.job_parts.guard import Learned
from jobs_pipeline.job_parts.learned_normal import Normal
from jobs_pipeline.jobs.tier_expiration import TierExpirationResult
from jobs_pipeline.operator_tools.forecast import Count, Forecast, forecast_result

TICK = datetime(2026, 12, 8, 0, 15, tzinfo=UTC)
LEARNED = Learned(TierExpirationResult, "processed")


def normal(bound: int | None, runs: int = 30) -> Normal:
    return Normal("tier_expiration", "processed", (300,) * runs, 300.0, 320.0, bound)


def test_a_count_over_its_learned_bound_says_so_with_its_numbers():
    over = Count(LEARNED, "downgrade {} users", 3_000, normal=normal(960))
    assert over.over_bound
    assert over.reasons() == ["3000 is over the learned bound of 960"]
    assert over.describe() == (
        "downgrade 3000 users (normal: median 300, p95 320, bound 960 over 30 runs)"
    )
    within = Count(LEARNED, "downgrade {} users", 900, normal=normal(960))
    assert not within.over_bound and within.reasons() == []


def test_without_a_learned_bound_only_the_fixed_caps_speak():
    young = Count(LEARNED, "downgrade {} users", 3_000, normal=normal(None, runs=3))
    assert not young.over_bound
    assert "not learned yet, 3 runs recorded" in young.describe()
    capped = Count(
        LEARNED,
        "downgrade {} users",
        3_000,
        over_cap="Refusing to downgrade: 3000 rows, over the cap of 1000. Go ahead with...",
        normal=normal(None, runs=3),
    )
    assert capped.reasons() == [
        "its guard would stop the run: Refusing to downgrade: 3000 rows, over the cap of 1000"
    ]


def test_a_forecast_is_abnormal_for_any_reason_and_its_result_names_each_number():
    failing = Forecast("global_override_check", TICK, failure="the run would fail: malformed")
    fine = Forecast(
        "tier_expiration",
        TICK,
        counts=(Count(LEARNED, "downgrade {} users", 5, normal=normal(960)),),
    )
    assert failing.abnormal and not fine.abnormal
    result = forecast_result([fine, failing], TICK).as_json()
    assert result["abnormal"] == ["global_override_check"]
    assert result["tier_expiration.processed.forecast"] == 5
    assert result["tier_expiration.processed.bound"] == 960
    assert result["global_override_check.abnormal"] is True
