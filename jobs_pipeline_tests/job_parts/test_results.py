"""Each job's result as operators read it: the JSON keys are the documented ones, a
result read back (by the metrics, the learned guard) is the one written, and a result of
another shape is told apart rather than read as zeros.
"""

import pytest
from pydantic import ValidationError

from jobs_pipeline.deployment.metrics import RESULT_TYPES, result_items
from jobs_pipeline.job_parts.guard import Learned
from jobs_pipeline.job_parts.results import JobResult, result_json
from jobs_pipeline.jobs.discipline_stats_rollup import RollupDryRun, RollupResult
from jobs_pipeline.jobs.email_delivery import EmailDeliveryDryRun, EmailDeliveryResult
from jobs_pipeline.jobs.global_override_check import OverrideCheckResult
from jobs_pipeline.jobs.promo_cleanup import PromoCleanupDryRun, PromoCleanupResult
from jobs_pipeline.jobs.tier_expiration import TierExpirationDryRun, TierExpirationResult
from jobs_pipeline.jobs.trial_reminder import TrialReminderDryRun, TrialReminderResult
from jobs_pipeline.operator_tools.undo import UndoResult

AT = "2026-12-07T00:15:00Z"
RESULTS: list[tuple[JobResult, list[str]]] = [
    (
        TierExpirationResult(processed=5, failed=0, skipped=1, timestamp=AT),
        ["processed", "failed", "skipped", "timestamp"],
    ),
    (
        TierExpirationDryRun(as_of=AT, would_process=5, timestamp=AT),
        ["dryRun", "asOf", "wouldProcess", "timestamp"],
    ),
    (OverrideCheckResult(action="none"), ["action"]),
    (
        OverrideCheckResult(action="cleared", previous_tier="pro", expired_at=AT),
        ["action", "previousTier", "expiredAt"],
    ),
    (
        OverrideCheckResult(dry_run=True, as_of=AT, action="active", tier="pro", expires_at=AT),
        ["dryRun", "asOf", "action", "tier", "expiresAt"],
    ),
    (
        PromoCleanupResult(codes_deactivated=2, redemptions_deleted=40, timestamp=AT),
        ["codesDeactivated", "redemptionsDeleted", "timestamp"],
    ),
    (
        PromoCleanupDryRun(as_of=AT, would_deactivate=2, would_delete=40, timestamp=AT),
        ["dryRun", "asOf", "wouldDeactivate", "wouldDelete", "timestamp"],
    ),
    (
        RollupResult(
            users_updated=3,
            users_computed=300,
            shots_counted=9000,
            parallel_groups=2,
            seconds=1.5,
            timestamp=AT,
        ),
        ["usersUpdated", "usersComputed", "shotsCounted", "parallelGroups", "seconds", "timestamp"],
    ),
    (
        RollupDryRun(would_update=300, would_change=3, timestamp=AT),
        ["dryRun", "wouldUpdate", "wouldChange", "timestamp"],
    ),
    (
        TrialReminderResult(queued3d=4, queued1d=2, sent=6, timestamp=AT),
        ["queued3d", "queued1d", "sent", "timestamp"],
    ),
    (
        TrialReminderDryRun(as_of=AT, would_queue3d=4, would_queue1d=2, timestamp=AT),
        ["dryRun", "asOf", "wouldQueue3d", "wouldQueue1d", "timestamp"],
    ),
    (
        EmailDeliveryResult(sent=6, retrying=1, failed=0, unconfirmed=0, timestamp=AT),
        ["sent", "retrying", "failed", "unconfirmed", "timestamp"],
    ),
    (EmailDeliveryDryRun(would_send=6, timestamp=AT), ["dryRun", "wouldSend", "timestamp"]),
    (
        UndoResult(
            dry_run=False,
            undone_run="r",
            restored=1,
            left_alone=1,
            left_alone_rows=[{"table": "users", "key": "k", "email": None, "why": "changed"}],
            timestamp=AT,
        ),
        ["dryRun", "undoneRun", "restored", "leftAlone", "leftAloneRows", "timestamp"],
    ),
]


@pytest.mark.parametrize(("result", "keys"), RESULTS, ids=lambda r: type(r).__name__)
def test_each_result_has_its_documented_keys_in_order_and_reads_back_whole(result, keys):
    written = result.as_json()
    assert list(written) == keys
    assert type(result).model_validate(written) == result
    if "dryRun" in written:
        assert result_json(written).startswith('{"dryRun": ')


def test_the_metrics_read_each_jobs_counts_through_its_result():
    assert result_items("tier_expiration", RESULTS[0][0].as_json()) == {
        "users_downgraded": 5,
        "users_failed": 0,
        "users_skipped": 1,
    }
    assert result_items("global_override_check", RESULTS[3][0].as_json()) == {
        "override_cleared": 1.0
    }
    assert result_items("global_override_check", RESULTS[2][0].as_json()) == {
        "override_cleared": 0.0
    }
    # A result of another shape (an older version's) gives no counts, not zeros.
    assert result_items("tier_expiration", {"downgraded": 5}) == {}
    assert set(RESULT_TYPES) == {
        "tier_expiration",
        "global_override_check",
        "promo_cleanup",
        "discipline_stats_rollup",
        "trial_reminder",
        "email_delivery",
        "history_retention",
    }


def test_a_learned_count_must_be_a_field_of_its_jobs_result():
    assert Learned(PromoCleanupResult, "codes_deactivated").key == "codesDeactivated"
    assert Learned(TrialReminderResult, "queued3d").key == "queued3d"
    with pytest.raises(ValueError, match="no count 'downgraded'"):
        Learned(TierExpirationResult, "downgraded")


def test_a_result_with_a_key_it_does_not_have_is_refused():
    with pytest.raises(ValidationError):
        TierExpirationResult.model_validate(
            {"processed": 1, "failed": 0, "skipped": 0, "timestamp": AT, "extra": 1}
        )
