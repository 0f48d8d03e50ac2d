"""What every job shares with its operators: the seed's log format and results.

Log lines keep the original design's format (`[tier-expiration] Found 5 users ...`),
and each run ends with `[job-name] Result: {...}` in JSON. The same result is the
op's output and its output metadata, so the Dagster UI shows every run's counts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg

# Per-row log lines stop here: a run over a million rows must not flood the event log.
LOG_LINE_CAP = 100

JobResult = dict[str, Any]


class DryRunConfig(dg.Config):
    """Run configuration every job accepts."""

    dry_run: bool = False


def result_json(result: Mapping[str, Any]) -> str:
    """The `Result:` line's JSON; a dry run's says so first, however it was stored."""
    first = {"dryRun": result["dryRun"]} if "dryRun" in result else {}
    return json.dumps({**first, **result}, sort_keys=False, default=str)


@dataclass
class JobReport:
    """Writes one job's log lines in the seed's `[job-name] message` format."""

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
        self.info(f"Result: {result_json(result)}")

    def result(self, result: JobResult) -> dg.Output[JobResult]:
        """Logs the closing `Result:` line and returns the result as output and metadata."""
        self.log_result(result)
        return dg.Output(result, metadata=result_metadata(result))


def result_metadata(result: JobResult) -> dict[str, Any]:
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


def result_of(events: Iterable[dg.DagsterEvent]) -> dict[str, Any] | None:
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
