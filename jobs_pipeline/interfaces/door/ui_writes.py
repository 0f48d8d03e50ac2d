"""What a GraphQL request from the UI writes, read from the request itself.

The door passes queries on untouched. A mutation is a write: it is recorded, and where
it starts runs (a launch, a re-execution, a backfill) the runs are tagged with who
started them, whatever tag the request itself carried. Nothing here knows the UI's own
documents: any mutation is recognised by its operation, and the fields that start runs
are Dagster's GraphQL schema's.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import yaml
from graphql import (
    FieldNode,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    Undefined,
    VariableNode,
    parse,
    value_from_ast_untyped,
)

from jobs_pipeline.resources.alerting import redact
from jobs_pipeline.steps.scheduling import TRIGGERED_BY_TAG

# The mutation fields that start runs: each argument that carries the runs' tags, and
# where in it they go (`executionMetadata.tags`, or a list of tags of its own).
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


class RefusedWrite(ValueError):
    """A write the door cannot pass on as the UI makes it; the message says why."""


@dataclass
class UiWrite:
    """One GraphQL request whose operation is a mutation."""

    request: dict[str, Any]
    fields: list[FieldNode]
    # Names looked up for what the request names only by id (a schedule's state).
    named: dict[str, str] = dataclass_field(default_factory=dict)

    @property
    def action(self) -> str:
        return ", ".join(selection.name.value for selection in self.fields)

    @property
    def variables(self) -> dict[str, Any]:
        variables = self.request.get("variables")
        return variables if isinstance(variables, dict) else {}

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

    def tagged(self, who: str) -> bytes:
        """The request with `jobs_pipeline/triggered_by=who` on every run it starts."""
        variables = self.variables
        for selection in self.fields:
            for argument, path in RUN_STARTING.get(selection.name.value, {}).items():
                for params in argument_values(selection, argument, variables):
                    set_tag(params, path, who)
        return json.dumps({**self.request, "variables": variables}).encode()

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
        return {"operationName": self.request.get("operationName"), **scrubbed(kept), **self.named}

    def state_ids(self) -> list[str]:
        """The schedule or sensor states the request names by id only."""
        return [
            str(value)
            for selection in self.fields
            for name, value in arguments_of(selection, self.variables).items()
            if name in BY_STATE_ID.get(selection.name.value, ()) and value
        ]


def ui_write(body: bytes, content_type: str) -> UiWrite | None:
    """The write a POSTed GraphQL request makes, or None when it makes none (a query, a
    subscription, or a request the webserver will refuse as it stands).
    """
    request = graphql_request(body, content_type)
    if request is None:
        return None
    operation = chosen_operation(request)
    if operation is None or operation.operation is not OperationType.MUTATION:
        return None
    fields = [f for f in operation.selection_set.selections if isinstance(f, FieldNode)]
    if len(fields) != len(operation.selection_set.selections):
        raise RefusedWrite("a mutation through the door names its fields, without fragments")
    if all(selection.name.value in NOT_WRITES for selection in fields):
        return None
    write = UiWrite(request, fields)
    for selection in fields:
        for argument in RUN_STARTING.get(selection.name.value, {}):
            for node in selection.arguments:
                if node.name.value == argument and not isinstance(node.value, VariableNode):
                    raise RefusedWrite(
                        f"{selection.name.value} through the door passes {argument} as a variable,"
                        " so that the runs it starts can be tagged with who started them"
                    )
    return write


def is_mutation_query(query: str | None, operation_name: str | None) -> bool:
    """Whether a GraphQL document sent in a URL (GET) would run a mutation."""
    if not query:
        return False
    operation = chosen_operation({"query": query, "operationName": operation_name})
    return operation is not None and operation.operation is OperationType.MUTATION


def is_subscription(query: Any, operation_name: Any) -> bool:
    operation = chosen_operation({"query": query, "operationName": operation_name})
    return operation is not None and operation.operation is OperationType.SUBSCRIPTION


def graphql_request(body: bytes, content_type: str) -> dict[str, Any] | None:
    """`{"query", "variables", "operationName"}` as the webserver reads a POST's body."""
    if "application/graphql" in content_type:
        return {"query": body.decode("utf-8", errors="replace")}
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(request, list):
        raise RefusedWrite("one GraphQL operation per request through the door")
    if not isinstance(request, dict):
        return None
    if isinstance(request.get("variables"), str):  # the webserver accepts them as JSON text
        try:
            request["variables"] = json.loads(request["variables"])
        except json.JSONDecodeError:
            return None
    return request


def chosen_operation(request: dict[str, Any]) -> OperationDefinitionNode | None:
    """The operation the webserver would execute: the one named, or the only one."""
    query = request.get("query")
    if not isinstance(query, str):
        return None
    try:
        document = parse(query)
    except GraphQLError:
        return None
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    name = request.get("operationName")
    if name:
        named = [op for op in operations if op.name is not None and op.name.value == name]
        return named[0] if len(named) == 1 else None
    return operations[0] if len(operations) == 1 else None


def arguments_of(selection: FieldNode, variables: dict[str, Any]) -> dict[str, Any]:
    """A field's arguments, with the variables they name filled in (those given)."""
    values = {
        node.name.value: value_from_ast_untyped(node.value, variables)
        for node in selection.arguments
    }
    return {name: value for name, value in values.items() if value is not Undefined}


def argument_values(
    selection: FieldNode, argument: str, variables: dict[str, Any]
) -> Iterator[dict]:
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
    tags = [
        tag
        for tag in holder.get(path[-1]) or []
        if not (isinstance(tag, dict) and tag.get("key") == TRIGGERED_BY_TAG)
    ]
    holder[path[-1]] = [*tags, {"key": TRIGGERED_BY_TAG, "value": who}]


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
