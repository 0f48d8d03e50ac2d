"""(b) The project's tier-expiration through Dagster, in a process of its own.

    python -m bench.dagster_tier_expiration DATABASE_URL

With `allow_large: true`: the bench downgrades far more users than the guard's caps
let a run do unasked. Prints one JSON line: the run's seconds, the Dagster events it
wrote, its result (processed, failed, skipped) and this process's peak resident
memory (ru_maxrss).
"""

import sys

from bench.job_run import print_measured_run
from jobs_pipeline.jobs.tier_expiration import JOB_NAME, OP_NAME


def main(database_url: str) -> None:
    print_measured_run(
        JOB_NAME,
        database_url,
        run_config={"ops": {OP_NAME: {"config": {"allow_large": True}}}},
    )


if __name__ == "__main__":
    main(sys.argv[1])
