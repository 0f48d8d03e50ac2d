"""(b) One run of a job through Dagster, measured in the process that runs it.

The bench's `dagster_*` entry points run in processes of their own so that this
process's peak resident memory (ru_maxrss) is the run's alone: what "memory flat in the
number of users" is about.
"""

import json
import resource
import time
from collections.abc import Mapping
from typing import Any

import dagster as dg

from jobs_pipeline.definitions import defs
from jobs_pipeline.job_parts.results import result_of
from jobs_pipeline.resources.database import AppDatabase


def print_measured_run(
    job_name: str,
    database_url: str,
    *,
    run_config: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Runs the job on a temporary instance and prints one JSON line: its seconds, the
    Dagster events it wrote, its result, and this process's peak resident memory.
    """
    job = defs.resolve_job_def(job_name)
    with dg.DagsterInstance.ephemeral() as instance:
        started = time.perf_counter()
        execution = job.execute_in_process(
            instance=instance,
            resources={"db": AppDatabase(url=database_url)},
            run_config=dict(run_config) if run_config else None,
            tags=dict(tags) if tags else None,
        )
        seconds = time.perf_counter() - started
        events = len(instance.all_logs(execution.run_id))
        result = result_of(execution.all_events) or {}
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {"seconds": seconds, "events": events, "peak_rss_mb": peak_kib / 1024, "result": result}
        )
    )
