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
import resource
import sys
import time
from typing import Any

import dagster as dg

from jobs_pipeline.database import AppDatabase
from jobs_pipeline.definitions import defs
from jobs_pipeline.jobs.discipline_stats_rollup import ALL_SHARDS_TAGS
from jobs_pipeline.launch import result_of

# The multi-asset's op is named after it.
OP_NAME = "user_discipline_stats"


def main(database_url: str, op_config: dict[str, Any]) -> None:
    job = defs.resolve_job_def("discipline_stats_rollup")
    with dg.DagsterInstance.ephemeral() as instance:
        started = time.perf_counter()
        execution = job.execute_in_process(
            instance=instance,
            resources={"db": AppDatabase(url=database_url)},
            run_config={"ops": {OP_NAME: {"config": op_config}}} if op_config else None,
            tags=ALL_SHARDS_TAGS,
        )
        seconds = time.perf_counter() - started
        events = len(instance.all_logs(execution.run_id))
        result = result_of(execution.all_events) or {}
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": seconds,
                "events": events,
                "peak_rss_mb": peak_kib / 1024,
                "result": result,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
