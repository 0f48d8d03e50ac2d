"""The blast-radius guard: a job about to change too many rows stops before writing.

A clock set wrong, or a bad bulk import in the app, would otherwise let
tier-expiration downgrade every paying user at midnight. Above the cap the run fails
(and so alerts) having written nothing; after looking, an operator re-runs it with
`allow_large` (`jobs-pipeline run JOB --allow-large`).
"""

import dagster as dg
from pydantic import Field


class GuardConfig(dg.Config):
    allow_large: bool = Field(
        default=False, description="Let a run change more rows than the caps allow."
    )


def check_blast_radius(
    what: str,
    about_to_change: int,
    out_of: int,
    *,
    max_rows: int,
    max_share: float,
    share_applies_above: int,
    allow_large: bool,
) -> None:
    """Fails the run when `about_to_change` is over `max_rows`, or over `max_share` of
    `out_of` (once it is above `share_applies_above`: a share of a handful means little).
    """
    if allow_large or about_to_change == 0:
        return
    share = about_to_change / out_of if out_of else 1.0
    over_rows = about_to_change > max_rows
    over_share = about_to_change > share_applies_above and share > max_share
    if not (over_rows or over_share):
        return
    cap = f"at most {max_rows} rows" if over_rows else f"at most {max_share:.0%} of them"
    raise dg.Failure(
        description=(
            f"Refusing to {what}: {about_to_change} of {out_of} ({share:.0%}), over the cap"
            f" ({cap}). Nothing was changed. Check the data and the clock, then re-run with"
            " allow_large (jobs-pipeline run ... --allow-large) if it is right."
        ),
        metadata={"about_to_change": about_to_change, "out_of": out_of},
        allow_retries=False,
    )
