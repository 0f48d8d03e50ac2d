"""(b) The project's rollup through Dagster, all shards in one run, in a process of its own.

Prints one JSON line: the run's seconds, the Dagster events it wrote, and this
process's peak resident memory (ru_maxrss), which is what "memory flat in the
number of users" is about.
"""

import json
import resource
import sys
import time

import dagster as dg

from jobs_pipeline.database import AppDatabase
from jobs_pipeline.definitions import defs
from jobs_pipeline.jobs.discipline_stats_rollup import ALL_SHARDS_TAGS


def main(database_url: str) -> None:
    job = defs.resolve_job_def("discipline_stats_rollup")
    with dg.DagsterInstance.ephemeral() as instance:
        started = time.perf_counter()
        execution = job.execute_in_process(
            instance=instance,
            resources={"db": AppDatabase(url=database_url)},
            tags=ALL_SHARDS_TAGS,
        )
        seconds = time.perf_counter() - started
        events = len(instance.all_logs(execution.run_id))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "events": events, "peak_rss_mb": peak_kib / 1024}))


if __name__ == "__main__":
    main(sys.argv[1])
