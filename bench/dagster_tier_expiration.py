"""(b) The project's tier-expiration through Dagster, in a process of its own.

    python -m bench.dagster_tier_expiration DATABASE_URL

With `allow_large: true`: the bench downgrades far more users than the guard's caps
let a run do unasked. Prints one JSON line: the run's seconds, the Dagster events it
wrote, its result (processed, failed, skipped) and this process's peak resident
memory (ru_maxrss).
"""

import json
import resource
import sys
import time

import dagster as dg

from jobs_pipeline.database import AppDatabase
from jobs_pipeline.definitions import defs
from jobs_pipeline.jobs.tier_expiration import JOB_NAME, OP_NAME
from jobs_pipeline.launch import result_of


def main(database_url: str) -> None:
    job = defs.resolve_job_def(JOB_NAME)
    with dg.DagsterInstance.ephemeral() as instance:
        started = time.perf_counter()
        execution = job.execute_in_process(
            instance=instance,
            resources={"db": AppDatabase(url=database_url)},
            run_config={"ops": {OP_NAME: {"config": {"allow_large": True}}}},
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
    main(sys.argv[1])
