"""(b) The project's rollup through Dagster, all shards in one run, in a process of its own.

    python -m bench.dagster_rollup DATABASE_URL ['{"parallel_groups": 1}']

The optional second argument is the op's config as JSON, so the bench can time the
rollup at a degree other than its default without a second entry point.

Prints one JSON line: the run's seconds, the Dagster events it wrote, the run's
result (its `Result:` line: usersUpdated, and usersComputed where the rollup
reports it) and this process's peak resident memory (ru_maxrss), which is what
"memory flat in the number of users" is about.
"""

import json
import sys
from typing import Any

from bench.job_run import print_measured_run
from jobs_pipeline.jobs.discipline_stats_rollup import ALL_SHARDS_TAGS, JOB_NAME

# The multi-asset's op is named after it.
OP_NAME = "user_discipline_stats"


def main(database_url: str, op_config: dict[str, Any]) -> None:
    print_measured_run(
        JOB_NAME,
        database_url,
        run_config={"ops": {OP_NAME: {"config": op_config}}} if op_config else None,
        tags=ALL_SHARDS_TAGS,
    )


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
