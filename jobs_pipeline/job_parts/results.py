"""What every job shares with its operators: its log lines and its result.

Log lines read `[tier-expiration] Found 5 users ...`, and each run ends with
`[job-name] Result: {...}` in JSON. The same result is the op's output and its output
metadata, so the Dagster UI shows every run's counts.

Each job's result is a typed model (`JobResult`, fields in snake_case, keys in
camelCase in the JSON: `would_process` is `wouldProcess`): the job writes one, and the
metrics, the learned guard and the forecast read past ones back through the same model,
so a field renamed in one place and not the others fails `mypy` or the first test that
loads the definitions, not a metric that silently reads zero.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import dagster as dg
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

# Per-row log lines stop here: a run over a million rows must not flood the event log.
LOG_LINE_CAP = 100

# A result as JSON: the op's output, the `Result:` line, the admin API's `result`.
ResultJson = dict[str, Any]


class JobResult(BaseModel):
    """A run's result."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid"
    )

    def as_json(self) -> ResultJson:
        """The JSON operators read; a field left None is left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def metric_items(self) -> dict[str, float]:
        """The counts the Prometheus metrics export, by their `item` label
        (`jobs_pipeline_job_last_success_items`); none for a job that exports none.
        """
        return {}


class DryRunResult(JobResult):
    """A dry run's result: `"dryRun": true` first, so it never passes for a real run's."""

    dry_run: Literal[True] = True


class DryRunConfig(dg.Config):
    """Run configuration every job accepts."""

    dry_run: bool = False


def result_json(result: Mapping[str, Any]) -> str:
    """The `Result:` line's JSON; a dry run's says so first, however it was stored."""
    first = {"dryRun": result["dryRun"]} if "dryRun" in result else {}
    return json.dumps({**first, **result}, sort_keys=False, default=str)


@dataclass
class JobReport:
    """Writes one job's log lines as `[job-name] message`."""

    context: dg.OpExecutionContext
    name: str
    _rows_seen: int = 0
    _rows_logged: int = 0

    def info(self, message: str) -> None:
        self.context.log.info(f"[{self.name}] {message}")

    def warning(self, message: str) -> None:
        self.context.log.warning(f"[{self.name}] {message}")

    def error(self, message: str) -> None:
        self.context.log.error(f"[{self.name}] {message}")

    def row(self, message: str) -> None:
        """A per-row line; only the first LOG_LINE_CAP of a series are logged."""
        self._rows_seen += 1
        if self._rows_logged < LOG_LINE_CAP:
            self.info(message)
            self._rows_logged += 1

    def end_rows(self, what: str, *, total: int | None = None) -> None:
        """Closes a series of per-row lines with one summary of those not logged."""
        seen = max(self._rows_seen, total or 0)
        if seen > self._rows_logged:
            self.info(
                f"... and {seen - self._rows_logged} more {what}"
                f" (per-row lines stop at {LOG_LINE_CAP})"
            )
        self._rows_seen = self._rows_logged = 0

    def log_result(self, result: JobResult) -> None:
        """The closing `[job-name] Result: {...}` line, in JSON."""
        self.info(f"Result: {result_json(result.as_json())}")

    def result(self, result: JobResult) -> dg.Output[ResultJson]:
        """Logs the closing `Result:` line and returns the result as output and metadata."""
        self.log_result(result)
        return dg.Output(result.as_json(), metadata=result_metadata(result.as_json()))


def result_metadata(result: ResultJson) -> dict[str, Any]:
    """The result as Dagster metadata: whole under `result`, and each count on its own,
    so the UI can plot counts across runs.
    """
    metadata: dict[str, Any] = {"result": dg.MetadataValue.json(result)}
    for key, value in result.items():
        if isinstance(value, bool):
            metadata[key] = dg.MetadataValue.bool(value)
        elif isinstance(value, int):
            metadata[key] = dg.MetadataValue.int(value)
        elif isinstance(value, float):
            metadata[key] = dg.MetadataValue.float(value)
        elif isinstance(value, str):
            metadata[key] = dg.MetadataValue.text(value)
    return metadata


def result_of(events: Iterable[dg.DagsterEvent]) -> ResultJson | None:
    """From an op's output, an asset's materialization, or a dry run's observation."""
    for event in events:
        metadata: Any = {}
        if event.is_successful_output:
            metadata = event.step_output_data.metadata
        elif event.is_step_materialization:
            metadata = event.step_materialization_data.materialization.metadata
        elif event.event_type == dg.DagsterEventType.ASSET_OBSERVATION:
            metadata = event.asset_observation_data.asset_observation.metadata
        if "result" in metadata:
            return dict(metadata["result"].value)
    return None
