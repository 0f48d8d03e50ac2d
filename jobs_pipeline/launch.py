"""Running a job in-process and reading its outcome: shared by the CLI and tests.

A job's result is read back from the `result` output metadata its op recorded,
so whoever launched the run sees exactly what the Dagster UI shows.
"""

from typing import Any

import dagster as dg


def op_config_for(job: dg.JobDefinition, **op_config: Any) -> dict[str, Any]:
    """Run config giving the same op config to every op of a (one-op) job."""
    return {"ops": {node.name: {"config": op_config} for node in job.nodes_in_topological_order}}


def result_of(execution: dg.ExecuteInProcessResult) -> dict[str, Any] | None:
    for event in execution.all_events:
        if event.is_successful_output and event.step_output_data.metadata.get("result"):
            return dict(event.step_output_data.metadata["result"].value)  # type: ignore[arg-type]
    return None


def failure_message(execution: dg.ExecuteInProcessResult) -> str:
    """The first line of what made the run fail, without a stack trace."""
    for event in execution.all_events:
        if not event.is_step_failure:
            continue
        failure = event.step_failure_data
        if failure.user_failure_data is not None and failure.user_failure_data.description:
            return str(failure.user_failure_data.description)
        error = failure.error
        while error is not None and error.cause is not None:
            error = error.cause
        if error is not None:
            return error.message.strip().splitlines()[0]
    return "the run failed"
