"""A GraphQL request to the door, read one way only, and written again in the door's words.

Dagster's webserver reads a request in several ways: JSON or GraphQL text in a POST's
body (by a substring of its content type), the query string of a GET, and the query
string of a POST whose body is neither. A door that read the request one way while the
webserver read the same bytes another would let through what it never saw. So the door
never passes a request on: it reads it here, strictly, and refuses what it cannot read
with certainty; what it can read it writes again as the one form the webserver is then
sent, a POST of `{"query", "variables", "operationName"}` as `application/json`, whose
document holds the one operation the door read and the fragments it uses, nothing else.

Nothing here does any I/O: the door's routes run it off their event loop.
"""

import functools
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from graphql import (
    DocumentNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    parse,
    print_ast,
)

JSON = "application/json"
GRAPHQL = "application/graphql"
# What a POST's JSON body may hold; anything else is not passed on (it means nothing to
# the webserver either), and a name given twice is refused.
REQUEST_FIELDS = frozenset({"query", "variables", "operationName", "extensions"})
# The query string of a GET: these names, each at most once.
QUERY_STRING_FIELDS = frozenset({"query", "variables", "operationName"})
# The query string of a POST: only the label the UI adds for the logs (`?op=RunsRoot`),
# which the webserver never reads from a JSON or GraphQL POST, and the door drops.
POST_LABEL = "op"
# The UI's largest document is 835 tokens (docs/deploying.md, "The door"); a document
# is refused past this, before the parser does more work than that.
MAX_TOKENS = 5_000
# Documents read before: the UI sends the same few hundred again and again.
READ_DOCUMENTS_KEPT = 512


class Refused(Exception):
    """A request the door does not pass on: the status to answer, and why, in words the
    person who sent it can act on.
    """

    def __init__(self, status: int, reason: str, attempted: str | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        # What was tried, as far as the door read it (the mutation's fields, say).
        self.attempted = attempted


@dataclass(frozen=True)
class GraphQLRequest:
    """What a request asks of GraphQL, as read from wherever the request carried it."""

    query: str
    variables: dict[str, Any]
    operation_name: str | None


# -- the HTTP request ---------------------------------------------------------------------------


def post_request(query_string: str, content_type: str | None, body: bytes) -> GraphQLRequest:
    """A POST's GraphQL request: JSON or GraphQL text in its body, nothing in its URL but
    the UI's label.
    """
    names = [name for name, _ in parse_qsl(query_string, keep_blank_values=True)]
    if names not in ([], [POST_LABEL]) or (query_string and not names):
        raise Refused(
            400,
            "a GraphQL POST through the door carries its request in the body only, not in"
            f" the URL's parameters (but for the UI's label, {POST_LABEL})",
        )
    kind = media_type(content_type)
    text = utf8(body)
    if kind == GRAPHQL:
        return GraphQLRequest(text, {}, None)
    return json_request(text)


def get_request(query_items: Iterable[tuple[str, str]]) -> GraphQLRequest | None:
    """A GET's GraphQL request, from its query string; None for none (the webserver's
    GraphiQL page).
    """
    fields: dict[str, str] = {}
    for name, value in query_items:
        if name not in QUERY_STRING_FIELDS:
            raise Refused(400, f"a GraphQL GET through the door has no parameter {name!r}")
        if name in fields:
            raise Refused(400, f"a GraphQL GET through the door gives {name!r} once")
        fields[name] = value
    if not fields:
        return None
    if "query" not in fields:
        raise Refused(400, "a GraphQL GET through the door gives its document as 'query'")
    variables = variables_of(fields.get("variables"))
    return GraphQLRequest(fields["query"], variables, fields.get("operationName") or None)


def media_type(content_type: str | None) -> str:
    """`application/json` or `application/graphql`, matched exactly; the only parameter
    taken is `charset=utf-8`. Anything else is refused (415): a type the door might read
    one way and the webserver another.
    """
    if content_type is None:
        raise Refused(415, f"a GraphQL POST through the door is sent as {JSON}")
    kind, *parameters = (part.strip() for part in content_type.split(";"))
    kind = kind.lower()
    if kind not in (JSON, GRAPHQL):
        raise Refused(
            415, f"a GraphQL POST through the door is sent as {JSON} (this was {kind or 'empty'})"
        )
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() != "charset" or value.strip().strip('"').lower() != "utf-8":
            raise Refused(415, f"the door takes {kind} with no parameter but charset=utf-8")
    return kind


def utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "the request's body is not UTF-8") from None


def json_request(text: str) -> GraphQLRequest:
    try:
        request = json.loads(text, object_pairs_hook=unique_keys)
    except (json.JSONDecodeError, RecursionError, DuplicateKey) as problem:
        raise Refused(400, f"the request's body is not one JSON object: {problem}") from None
    if isinstance(request, list):
        raise Refused(400, "one GraphQL operation per request through the door")
    if not isinstance(request, dict):
        raise Refused(400, "the request's body is not one JSON object")
    unknown = sorted(set(request) - REQUEST_FIELDS)
    if unknown:
        raise Refused(400, f"a GraphQL request has no field {unknown[0]!r}")
    query = request.get("query")
    if not isinstance(query, str):
        raise Refused(400, "a GraphQL request gives its document as the string 'query'")
    name = request.get("operationName")
    if name is not None and not isinstance(name, str):
        raise Refused(400, "'operationName' is a string")
    return GraphQLRequest(query, variables_of(request.get("variables")), name or None)


class DuplicateKey(ValueError):
    pass


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose every name is given once: `{"query": A, "query": B}` is read
    one way by one parser and another by the next, so it is not read at all.
    """
    made: dict[str, Any] = {}
    for key, value in pairs:
        if key in made:
            raise DuplicateKey(f"{key!r} is given twice")
        made[key] = value
    return made


def variables_of(variables: Any) -> dict[str, Any]:
    """The variables as a JSON object: given as one, as its JSON text (the webserver
    takes both), or not at all.
    """
    if variables is None:
        return {}
    if isinstance(variables, str):
        try:
            variables = json.loads(variables, object_pairs_hook=unique_keys)
        except (json.JSONDecodeError, RecursionError, DuplicateKey) as problem:
            raise Refused(400, f"the GraphQL variables are not a JSON object: {problem}") from None
    if not isinstance(variables, dict):
        raise Refused(400, "the GraphQL variables are a JSON object")
    return variables


# -- the GraphQL document -----------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """The one operation a request runs, alone in a document of its own."""

    document: DocumentNode  # the operation and the fragments it uses
    definition: OperationDefinitionNode
    text: str  # the document, printed
    variables: dict[str, Any]

    @property
    def kind(self) -> OperationType:
        return self.definition.operation

    @property
    def name(self) -> str | None:
        return self.definition.name.value if self.definition.name else None

    def passed_on(self) -> dict[str, Any]:
        """The request the webserver is sent: this operation, and only the variables it
        declares.
        """
        declared = {v.variable.name.value for v in self.definition.variable_definitions}
        request: dict[str, Any] = {
            "query": self.text,
            "variables": {k: v for k, v in self.variables.items() if k in declared},
        }
        if self.name is not None:
            request["operationName"] = self.name
        return request

    def body(self) -> bytes:
        return json.dumps(self.passed_on(), allow_nan=False).encode()


def operation_of(request: GraphQLRequest) -> Operation:
    """The operation the request runs, as the webserver would choose it: the one named,
    or the only one. A document the door cannot parse, or one that names no single
    operation, is refused.
    """
    document, definition, text = chosen_operation(request.query, request.operation_name)
    return Operation(document, definition, text, request.variables)


@functools.lru_cache(maxsize=READ_DOCUMENTS_KEPT)
def chosen_operation(
    query: str, operation_name: str | None
) -> tuple[DocumentNode, OperationDefinitionNode, str]:
    """The operation of `query` named `operation_name` (or its only one), in a document
    with the fragments it uses, and that document printed. Read once per distinct text:
    the UI sends the same documents again and again, and none is ever changed in place.
    """
    operations, fragments = definitions_of(query)
    if operation_name is not None:
        chosen = operations.get(operation_name)
        if chosen is None:
            raise Refused(400, f"the document has no operation named {operation_name!r}")
    elif len(operations) == 1:
        (chosen,) = operations.values()
    else:
        raise Refused(400, "a document of several operations names the one to run")
    used = [fragments[name] for name in fragments_used(chosen, fragments)]
    document = DocumentNode(definitions=(chosen, *used))
    return document, chosen, print_ast(document)


def definitions_of(
    query: str,
) -> tuple[dict[str | None, OperationDefinitionNode], dict[str, FragmentDefinitionNode]]:
    """The document's operations by name (None for an anonymous one) and its fragments."""
    try:
        document = parse(query, no_location=True, max_tokens=MAX_TOKENS)
    except GraphQLError as problem:
        raise Refused(400, f"the GraphQL document cannot be read: {problem.message}") from None
    except RecursionError:
        raise Refused(400, "the GraphQL document is nested too deeply to read") from None
    operations: dict[str | None, OperationDefinitionNode] = {}
    fragments: dict[str, FragmentDefinitionNode] = {}
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            name = definition.name.value if definition.name else None
            if name in operations:
                raise Refused(400, f"the document has two operations named {name or '(none)'}")
            operations[name] = definition
        elif isinstance(definition, FragmentDefinitionNode):
            if definition.name.value in fragments:
                raise Refused(400, f"the document has two fragments {definition.name.value}")
            fragments[definition.name.value] = definition
        else:
            raise Refused(400, "a GraphQL request's document holds operations and fragments only")
    if None in operations and len(operations) > 1:
        raise Refused(400, "an anonymous operation is the only one in its document")
    return operations, fragments


def fragments_used(
    operation: OperationDefinitionNode, fragments: Mapping[str, FragmentDefinitionNode]
) -> list[str]:
    """The fragments `operation` spreads, directly or through others, in document order."""
    found: set[str] = set()
    waiting: list[OperationDefinitionNode | FragmentDefinitionNode] = [operation]
    while waiting:
        for name in spread_names(waiting.pop().selection_set):
            if name not in fragments:
                raise Refused(400, f"the document spreads a fragment it lacks: {name}")
            if name not in found:
                found.add(name)
                waiting.append(fragments[name])
    return [name for name in fragments if name in found]


def spread_names(selection_set: SelectionSetNode | None) -> Iterator[str]:
    """The fragments spread anywhere in `selection_set` (selections are where they may be)."""
    waiting = [selection_set]
    while waiting:
        current = waiting.pop()
        for selection in current.selections if current else ():
            if isinstance(selection, FragmentSpreadNode):
                yield selection.name.value
            else:  # a field or an inline fragment
                waiting.append(getattr(selection, "selection_set", None))
