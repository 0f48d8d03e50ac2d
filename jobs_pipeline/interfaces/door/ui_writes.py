"""What a mutation from the UI writes, read from the operation the door read.

A mutation is a write: it is recorded, and where it starts runs (a launch, a
re-execution, a backfill) the runs are tagged with who started them, whatever tag the
request itself carried. Nothing here knows the UI's own documents: any mutation is
recognised by its operation, and the fields that start runs are Dagster's GraphQL
schema's (a test holds `RUN_STARTING` equal to what the schema says).
"""

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from typing import Any

import yaml
from graphql import (
    FieldNode,
    OperationDefinitionNode,
    Undefined,
    VariableNode,
    value_from_ast_untyped,
)

from jobs_pipeline.interfaces.door.graphql_reading import Operation, Refused
from jobs_pipeline.redaction import redact
from jobs_pipeline.tags import TRIGGERED_BY_TAG

# The mutation fields that start runs: each argument that carries the runs' tags, and
# where in it they go (`executionMetadata.tags`, or a list of tags of its own). These
# are every argument of Dagster's mutations that holds an `ExecutionTag`.
EXECUTION_TAGS = ("executionMetadata", "tags")
EXTRA_TAGS = ("extraTags",)
BACKFILL_TAGS = ("tags",)
RUN_STARTING: dict[str, dict[str, tuple[str, ...]]] = {
    "launchPipelineExecution": {"executionParams": EXECUTION_TAGS},
    "launchRun": {"executionParams": EXECUTION_TAGS},
    "launchMultipleRuns": {"executionParamsList": EXECUTION_TAGS},
    "launchPipelineReexecution": {
        "executionParams": EXECUTION_TAGS,
        "reexecutionParams": EXTRA_TAGS,
    },
    "launchRunReexecution": {"executionParams": EXECUTION_TAGS, "reexecutionParams": EXTRA_TAGS},
    "launchPartitionBackfill": {"backfillParams": BACKFILL_TAGS},
    "reexecutePartitionBackfill": {"reexecutionParams": EXTRA_TAGS},
}
# Mutations that name a schedule or sensor only by its state's id: the door looks its name up.
BY_STATE_ID: dict[str, tuple[str, ...]] = {
    "stopRunningSchedule": ("id", "scheduleOriginId"),
    "stopSensor": ("id", "jobOriginId"),
}
# Mutations that change nothing anyone runs on: the UI's own bookkeeping.
NOT_WRITES = frozenset({"logTelemetry", "setNuxSeen"})
# The variables that say what a write was about, in the order a summary names them.
SUBJECT_KEYS = (
    "jobName",
    "pipelineName",
    "scheduleName",
    "sensorName",
    "instigatorName",
    "partitionNames",
    "runId",
    "runIds",
    "parentRunId",
    "backfillId",
    "repositoryLocationName",
    "concurrencyKey",
)


@dataclass
class UiWrite:
    """A mutation an admin makes through the door: one operation, its fields known."""

    operation: Operation
    fields: list[FieldNode]
    # Names looked up for what the request names only by id (a schedule's state).
    named: dict[str, str] = dataclass_field(default_factory=dict)

    @property
    def action(self) -> str:
        return action_of(self.fields)

    @property
    def variables(self) -> dict[str, Any]:
        """The variables as the webserver will take them: those given, else the defaults
        the document declares.
        """
        return {**declared_defaults(self.operation.definition), **self.operation.variables}

    @property
    def arguments(self) -> dict[str, dict[str, Any]]:
        """Each field's arguments (by the name its answer comes under, its alias if it has
        one), passed as variables or written into the document alike: what the write is
        about, however the request spelled it.
        """
        return {
            (selection.alias or selection.name).value: arguments_of(selection, self.variables)
            for selection in self.fields
        }

    def tagged(self, who: str) -> Operation:
        """The operation with `jobs_pipeline/triggered_by=who` on every run it starts, in
        place of any such tag the request set itself. Every argument that starts runs is
        a variable without a default (`ui_write` made sure), so its value, here, is all
        the webserver will read.
        """
        variables = copy.deepcopy(self.operation.variables)
        for selection in self.fields:
            for argument, path in RUN_STARTING.get(selection.name.value, {}).items():
                for params in argument_values(selection, argument, variables):
                    set_tag(params, path, who)
        return replace(self.operation, variables=variables)

    def summary(self) -> str:
        """The mutation and what it was about: `launchPipelineExecution jobName=...`."""
        subjects: dict[str, list[str]] = {}
        for key, value in subjects_in(self.arguments):
            subjects.setdefault(key, []).extend(value if isinstance(value, list) else [value])
        subjects.update({key: [value] for key, value in self.named.items()})
        if len(subjects) > 1:  # the code location is a subject only when it is the only one
            subjects.pop("repositoryLocationName", None)
        named = " ".join(
            f"{key}={format_subject(subjects[key])}" for key in SUBJECT_KEYS if key in subjects
        )
        return f"{self.action} {named}".strip()

    def detail(self) -> dict[str, Any]:
        """The request's arguments as kept with the record (a mutation of several fields:
        each field's under its name): a run config keeps only its ops' config (resources may
        hold credentials), and no string keeps a password.
        """
        arguments = self.arguments
        kept = next(iter(arguments.values())) if len(arguments) == 1 else arguments
        return {"operationName": self.operation.name, **scrubbed(kept), **self.named}

    def state_ids(self) -> list[str]:
        """The schedule or sensor states the request names by id only."""
        return [
            str(value)
            for selection in self.fields
            for name, value in arguments_of(selection, self.variables).items()
            if name in BY_STATE_ID.get(selection.name.value, ()) and value
        ]


def ui_write(operation: Operation) -> UiWrite | None:
    """The write a mutation makes, or None for a mutation that writes nothing anyone runs
    on (the UI's own bookkeeping). A mutation whose fields, or whose runs' tags, the door
    cannot know for certain is refused.
    """
    selections = operation.definition.selection_set.selections
    fields = [selection for selection in selections if isinstance(selection, FieldNode)]
    if len(fields) != len(selections):
        raise Refused(
            400,
            "a mutation through the door names its fields, without fragments",
            attempted="a mutation of fragments",
        )
    if all(selection.name.value in NOT_WRITES for selection in fields):
        return None
    for selection in fields:
        check_run_starting(operation, selection)
    return UiWrite(operation, fields)


def action_of(fields: list[FieldNode]) -> str:
    return ", ".join(selection.name.value for selection in fields)


def check_run_starting(operation: Operation, selection: FieldNode) -> None:
    """Each argument of `selection` that starts runs is a variable the request gives (or
    leaves out), with no default in the document, and holds what a run's parameters hold:
    then the door's tag is the one the runs get.
    """
    field = selection.name.value
    defaults = declared_defaults(operation.definition)
    for node in selection.arguments:
        argument = node.name.value
        if argument not in RUN_STARTING.get(field, {}):
            continue
        if not isinstance(node.value, VariableNode):
            raise Refused(
                400,
                f"{field} through the door passes {argument} as a variable, so that the runs"
                " it starts can be tagged with who started them",
                attempted=field,
            )
        variable = node.value.name.value
        if variable in defaults:
            raise Refused(
                400,
                f"{field} through the door passes {argument} as a variable without a default"
                " in the document, so that the runs it starts can be tagged with who started"
                " them",
                attempted=field,
            )
        value = operation.variables.get(variable)
        items = value if isinstance(value, list) else [value]
        if not all(item is None or isinstance(item, dict) for item in items):
            raise Refused(
                400, f"{field}'s {argument} is an object of a run's parameters", attempted=field
            )


def declared_defaults(definition: OperationDefinitionNode) -> dict[str, Any]:
    """The variables the operation declares with a default, and those defaults."""
    return {
        declared.variable.name.value: value_from_ast_untyped(declared.default_value)
        for declared in definition.variable_definitions
        if declared.default_value is not None
    }


def arguments_of(selection: FieldNode, variables: dict[str, Any]) -> dict[str, Any]:
    """A field's arguments, with the variables they name filled in (those given)."""
    values = {
        node.name.value: value_from_ast_untyped(node.value, variables)
        for node in selection.arguments
    }
    return {name: value for name, value in values.items() if value is not Undefined}


def argument_values(
    selection: FieldNode, argument: str, variables: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """The value (each value, for a list) the selection's `argument` variable holds."""
    for node in selection.arguments:
        if node.name.value != argument or not isinstance(node.value, VariableNode):
            continue
        value = variables.get(node.value.name.value)
        for params in value if isinstance(value, list) else [value]:
            if isinstance(params, dict):
                yield params


def set_tag(params: dict[str, Any], path: tuple[str, ...], who: str) -> None:
    """Sets the tag in the list of tags at `path`, replacing any the request set itself."""
    holder = params
    for key in path[:-1]:
        if not isinstance(holder.get(key), dict):
            holder[key] = {}
        holder = holder[key]
    tags = holder.get(path[-1])
    kept = [
        tag
        for tag in (tags if isinstance(tags, list) else [])
        if not (isinstance(tag, dict) and tag.get("key") == TRIGGERED_BY_TAG)
    ]
    holder[path[-1]] = [*kept, {"key": TRIGGERED_BY_TAG, "value": who}]


def subjects_in(value: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) under `value` whose key says what a write is about."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in SUBJECT_KEYS and isinstance(inner, str | list):
                yield key, inner
            else:
                yield from subjects_in(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from subjects_in(inner)


def format_subject(values: list[Any]) -> str:
    return ",".join(unique([str(value) for value in values]))


def scrubbed(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: ops_only(inner) if key == "runConfigData" else scrubbed(inner)
            for key, inner in value.items()
        }
    if isinstance(value, list):
        return [scrubbed(inner) for inner in value]
    return redact(value) if isinstance(value, str) else value


def ops_only(run_config: Any) -> Any:
    """A run config as the UI sends it (YAML text, or a dict) down to its ops' config."""
    if isinstance(run_config, str):
        try:
            run_config = yaml.safe_load(run_config)
        except yaml.YAMLError:
            return "(run config that is not YAML: not kept)"
    if isinstance(run_config, dict):
        return scrubbed({key: v for key, v in run_config.items() if key == "ops"})
    return None


@dataclass(frozen=True)
class WriteOutcome:
    run_ids: list[str]
    backfill_id: str | None
    outcome: str


def outcome_of(write: UiWrite, status: int, body: bytes) -> WriteOutcome:
    """What the webserver's answer says the write did: the runs it made or touched, and
    `ok` or what went wrong.
    """
    try:
        answer = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return WriteOutcome(run_ids_in(write.arguments), None, f"HTTP {status}")
    if not isinstance(answer, dict):
        return WriteOutcome(run_ids_in(write.arguments), None, f"HTTP {status}")
    data = answer.get("data")
    if not isinstance(data, dict):
        data = {}
    run_ids = unique([*run_ids_in(data), *run_ids_in(write.arguments)])
    backfills = [value for key, value in walk(data) if key == "backfillId"]
    return WriteOutcome(run_ids, str(backfills[0]) if backfills else None, verdict(answer, data))


def verdict(answer: dict[str, Any], data: dict[str, Any]) -> str:
    errors = answer.get("errors")
    if isinstance(errors, list) and errors:
        message = errors[0].get("message") if isinstance(errors[0], dict) else errors[0]
        return f"error: {redact(opening_line(message))}"
    for result in data.values():
        if not isinstance(result, dict):
            continue
        typename = str(result.get("__typename") or "")
        if typename.endswith(("Error", "Invalid", "Conflict")) or "NotFound" in typename:
            message = result.get("message")
            return f"{typename}: {redact(opening_line(message))}" if message else typename
    return "ok"


def opening_line(message: Any) -> str:
    lines = str(message).strip().splitlines()
    return lines[0] if lines else ""


def run_ids_in(value: Any) -> list[str]:
    """Run ids named anywhere in `value`: as a run's id, or under a key that names runs."""
    found: list[str] = []
    for key, inner in walk(value):
        if isinstance(inner, dict) and inner.get("__typename") == "Run" and "id" in inner:
            found.append(str(inner["id"]))
        if key in ("runId", "parentRunId") and isinstance(inner, str):
            found.append(inner)
        elif key in ("runIds", "launchedRunIds") and isinstance(inner, list):
            found.extend(str(run_id) for run_id in inner)
    return unique(found)


def walk(value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key, inner
            yield from walk(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from walk(inner)


def unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))
