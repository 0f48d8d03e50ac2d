"""The blast-radius guard: a job about to change too many rows stops before writing.

A clock set wrong, or a bad bulk import in the app, would otherwise let
tier-expiration downgrade every paying user at midnight. Above a cap the run fails
(and so alerts) having written nothing; after looking, an operator re-runs it with
`allow_large` (`jobs-pipeline run JOB --allow-large`).
"""

from dataclasses import dataclass

import dagster as dg
from pydantic import Field


class GuardConfig(dg.Config):
    allow_large: bool = Field(
        default=False, description="Let a run change more rows than the caps allow."
    )


@dataclass(frozen=True)
class Caps:
    """A change's two caps: a number of rows, and a share of the rows it is taken from,
    which applies only once the run would change more than `share_applies_above` rows
    (a share of a handful means little). Each names the setting that moves it.
    """

    job: str  # the job's seed name, for the command that goes ahead
    what: str  # "downgrade paying users"
    out_of_what: str  # "paying users"
    max_rows: int
    max_rows_setting: str
    max_share: float
    max_share_setting: str
    share_applies_above: int


def check_blast_radius(caps: Caps, about_to_change: int, out_of: int, *, allow_large: bool) -> None:
    """Fails the run, having written nothing, when `about_to_change` is over a cap."""
    if allow_large or about_to_change == 0:
        return
    share = about_to_change / out_of if out_of else 1.0
    over_rows = about_to_change > caps.max_rows
    over_share = about_to_change > caps.share_applies_above and share > caps.max_share
    if not (over_rows or over_share):
        return
    raise dg.Failure(
        description=refusal(caps, about_to_change, out_of, share, over_rows=over_rows),
        metadata={"about_to_change": about_to_change, "out_of": out_of},
        allow_retries=False,
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
        f" if it is right, run it again allowing it: jobs-pipeline run {caps.job}"
        " --allow-large (or allow_large: true in the Launchpad or the admin API's body)."
    )
