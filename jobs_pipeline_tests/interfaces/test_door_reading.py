"""How the door reads a GraphQL request, and what it then sends the webserver: no
process, no browser, no database.

Each finding of the door's review has its case here: a write in the URL of a POST, a
content type naming two formats, a run's tag set by a default in the document. The
property at the end is the door's promise itself: whatever bytes arrive, what the
webserver is sent, read as the webserver reads it, runs a write only when the door
recorded one, and every run it starts carries the signed-in person's name.
"""

import asyncio
import itertools
import json
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from graphql import (
    GraphQLInputObjectType,
    GraphQLNamedType,
    GraphQLSchema,
    OperationType,
    get_named_type,
    get_operation_ast,
    parse,
)
from starlette.requests import HTTPConnection

from jobs_pipeline.interfaces.door.arrival import arrival_of, parse_networks
from jobs_pipeline.interfaces.door.graphql_passage import Passage, passage_of, read_off_the_loop
from jobs_pipeline.interfaces.door.graphql_reading import (
    MAX_TOKENS,
    Refused,
    chosen_operation,
    media_type,
)
from jobs_pipeline.interfaces.door.session import Access
from jobs_pipeline.interfaces.door.socket_relay import relayed_message
from jobs_pipeline.interfaces.door.ui_writes import RUN_STARTING
from jobs_pipeline.tags import TRIGGERED_BY_TAG

JSON = "application/json"
ADMIN = "ui:admin@example.com"
SET_LIMIT = 'mutation { setConcurrencyLimit(concurrencyKey: "k", limit: 3) }'
LAUNCH = (
    "mutation Launch($executionParams: ExecutionParams!) {"
    " launchPipelineExecution(executionParams: $executionParams) { __typename } }"
)
PARAMS = {
    "selector": {
        "repositoryLocationName": "jobs_pipeline",
        "repositoryName": "__repository__",
        "jobName": "tier_expiration",
    },
    "executionMetadata": {"tags": [{"key": TRIGGERED_BY_TAG, "value": "ui:someone@else"}]},
}


def post(body: Any, content_type: str | None = "application/json", query: str = "") -> Passage:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return passage_of("POST", query, content_type, raw, Access.ADMIN)


def refusal(call: Any, *arguments: Any) -> Refused:
    with pytest.raises(Refused) as refused:
        call(*arguments)
    return refused.value


def sent(passage: Passage, who: str = ADMIN) -> dict[str, Any]:
    """The JSON the webserver is sent for `passage`, a write tagged for `who`."""
    assert passage.operation is not None
    operation = passage.write.tagged(who) if passage.write else passage.operation
    return json.loads(operation.body())


# -- 1. a write in the URL of a POST ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b""),
        (None, b""),
        ("application/x-www-form-urlencoded", b""),
        ("multipart/form-data; boundary=x", b"--x--"),
        ("application/json", b'{"query": "{ version }"}'),
    ],
)
def test_a_post_with_parameters_in_its_url_is_refused_whatever_its_body(content_type, body):
    query = urlencode({"query": SET_LIMIT})
    refused = refusal(passage_of, "POST", query, content_type, body, Access.ADMIN)
    assert refused.status == 400
    assert "not in the URL's parameters" in refused.reason


def test_a_post_with_an_empty_query_string_is_read_from_its_body():
    passage = passage_of("POST", "", "application/json", b'{"query": "{ version }"}', Access.ADMIN)
    assert passage.write is None and sent(passage)["query"].strip().startswith("{")


def test_a_mutation_in_the_url_of_a_get_is_refused_and_names_what_it_tried():
    refused = refusal(passage_of, "GET", urlencode({"query": SET_LIMIT}), None, b"", Access.ADMIN)
    assert (refused.status, refused.attempted) == (400, "setConcurrencyLimit")


def test_a_query_in_the_url_of_a_get_goes_on_as_the_doors_own_post():
    passage = passage_of(
        "GET",
        urlencode({"query": "query V { version }", "variables": "{}"}),
        None,
        b"",
        Access.ADMIN,
    )
    assert sent(passage) == {
        "query": "query V {\n  version\n}",
        "variables": {},
        "operationName": "V",
    }


@pytest.mark.parametrize(
    "query_string",
    [
        "query=%7Bversion%7D&query=%7Bversion%7D",
        "query=%7Bversion%7D&extra=1",
        "variables=%7B%7D",
    ],
)
def test_a_get_with_unknown_repeated_or_missing_parameters_is_refused(query_string):
    assert refusal(passage_of, "GET", query_string, None, b"", Access.ADMIN).status == 400


def test_a_get_asking_for_nothing_is_the_graphiql_page():
    assert passage_of("GET", "", None, b"", Access.ADMIN) == Passage(None, None)


# -- 2. content types --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/graphql; x=application/json",
        "application/json, application/graphql",
        "application/graphql+json;application/json",
        "application/json; charset=latin-1",
        "application/jsonx",
        "text/json",
        "application/json; boundary=x",
        "",
    ],
)
def test_a_content_type_that_is_not_exactly_json_or_graphql_is_refused(content_type):
    body = json.dumps({"query": SET_LIMIT}).encode()
    refused = refusal(passage_of, "POST", "", content_type, body, Access.ADMIN)
    assert refused.status == 415


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("application/json", "application/json"),
        ("Application/JSON; charset=UTF-8", "application/json"),
        ('application/json;charset="utf-8"', "application/json"),
        ("application/graphql", "application/graphql"),
    ],
)
def test_json_and_graphql_are_matched_exactly_in_any_case(content_type, kind):
    assert media_type(content_type) == kind


def test_a_mutation_sent_as_graphql_text_is_a_write_sent_on_as_json():
    passage = post(SET_LIMIT.encode(), "application/graphql")
    assert passage.write is not None
    assert passage.write.summary() == "setConcurrencyLimit concurrencyKey=k"
    assert "setConcurrencyLimit" in sent(passage)["query"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"query": "{ version }", "query": "mutation { reloadWorkspace { __typename } }"}',
        b'[{"query": "{ version }"}]',
        b'"{ version }"',
        b"{not json",
        b'{"query": 1}',
        b'{"query": "{ version }", "operationName": 3}',
        b'{"query": "{ version }", "variables": [1]}',
        b'{"query": "{ version }", "variables": "{not json"}',
        b'{"query": "{ version }", "other": 1}',
        '{"query": "{ version }"}'.encode("utf-16"),
        b'{"query": "{ version }"' + b"\xff" + b"}",
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_a_body_the_door_cannot_read_one_way_only_is_refused(body):
    assert refusal(post, body).status == 400


def test_variables_given_as_json_text_are_read_as_the_webserver_reads_them():
    body = {"query": LAUNCH, "variables": json.dumps({"executionParams": PARAMS})}
    passage = post(body)
    assert passage.write is not None
    params = sent(passage)["variables"]["executionParams"]
    assert params["executionMetadata"]["tags"] == [{"key": TRIGGERED_BY_TAG, "value": ADMIN}]


# -- 3. the name on a run ----------------------------------------------------------------------


def test_a_run_is_tagged_with_the_signed_in_person_whatever_tag_the_request_set():
    passage = post({"query": LAUNCH, "variables": {"executionParams": PARAMS}})
    tags = sent(passage)["variables"]["executionParams"]["executionMetadata"]["tags"]
    assert tags == [{"key": TRIGGERED_BY_TAG, "value": ADMIN}]


def test_a_run_starting_variable_with_a_default_in_the_document_is_refused():
    defaulted = (
        'mutation L($p: ExecutionParams = {selector: {repositoryLocationName: "jobs_pipeline",'
        ' repositoryName: "__repository__", jobName: "tier_expiration"}, executionMetadata:'
        ' {tags: [{key: "jobs_pipeline/triggered_by", value: "ui:someone@else"}]}})'
        " { launchPipelineExecution(executionParams: $p) { __typename } }"
    )
    refused = refusal(post, {"query": defaulted})
    assert (refused.status, refused.attempted) == (400, "launchPipelineExecution")
    assert "without a default" in refused.reason


def test_run_parameters_written_into_the_document_are_refused():
    inline = (
        "mutation { launchPipelineExecution(executionParams: {selector: {repositoryLocationName:"
        ' "jobs_pipeline", repositoryName: "__repository__", jobName: "tier_expiration"}})'
        " { __typename } }"
    )
    assert "passes executionParams as a variable" in refusal(post, {"query": inline}).reason


def test_every_alias_of_a_run_starting_field_is_tagged():
    double = (
        "mutation L($a: ExecutionParams!, $b: ExecutionParams!) {"
        " one: launchPipelineExecution(executionParams: $a) { __typename }"
        " two: launchRun(executionParams: $b) { __typename } }"
    )
    passage = post({"query": double, "variables": {"a": PARAMS, "b": {**PARAMS}}})
    variables = sent(passage)["variables"]
    for name in ("a", "b"):
        tags = variables[name]["executionMetadata"]["tags"]
        assert tags == [{"key": TRIGGERED_BY_TAG, "value": ADMIN}]


def test_only_the_chosen_operation_of_several_reaches_the_webserver():
    document = f"query Harmless {{ version }} {SET_LIMIT.replace('mutation', 'mutation Limit')}"
    harmless = post({"query": document, "operationName": "Harmless"})
    assert harmless.write is None
    assert "setConcurrencyLimit" not in sent(harmless)["query"]
    limit = post({"query": document, "operationName": "Limit"})
    assert limit.write is not None and "version" not in sent(limit)["query"]
    assert refusal(post, {"query": document}).status == 400  # which one? not said


def test_a_list_of_run_parameters_is_tagged_item_by_item():
    many = (
        "mutation M($list: [ExecutionParams!]!) {"
        " launchMultipleRuns(executionParamsList: $list) { __typename } }"
    )
    passage = post({"query": many, "variables": {"list": [PARAMS, {"selector": {}}]}})
    for params in sent(passage)["variables"]["list"]:
        assert params["executionMetadata"]["tags"][-1] == {"key": TRIGGERED_BY_TAG, "value": ADMIN}


def test_a_mutation_of_fragments_is_refused():
    fragmented = (
        "mutation { ...F } fragment F on Mutation"
        ' { setConcurrencyLimit(concurrencyKey: "k", limit: 1) }'
    )
    assert refusal(post, {"query": fragmented}).status == 400


def test_a_viewers_write_is_refused_and_their_bookkeeping_passes():
    body = json.dumps({"query": SET_LIMIT}).encode()
    refused = refusal(passage_of, "POST", "", "application/json", body, Access.VIEWER)
    assert (refused.status, refused.attempted) == (403, "setConcurrencyLimit")
    nux = json.dumps({"query": "mutation { setNuxSeen }"}).encode()
    assert passage_of("POST", "", "application/json", nux, Access.VIEWER).write is None


def test_a_subscription_over_http_is_refused():
    subscription = {"query": 'subscription { pipelineRunLogs(runId: "x") { __typename } }'}
    assert refusal(post, subscription).status == 400


# -- 8. reading stays bounded ------------------------------------------------------------------


def test_a_document_past_the_token_limit_is_refused_before_it_is_read_whole():
    huge = "{ " + " ".join(f"a{i}: version" for i in range(MAX_TOKENS)) + " }"
    assert "cannot be read" in refusal(post, {"query": huge}).reason


def test_a_document_read_before_is_read_from_memory():
    chosen_operation.cache_clear()
    for _ in range(3):
        post({"query": "query Again { version }"})
    assert chosen_operation.cache_info().hits == 2


# -- the websocket -----------------------------------------------------------------------------


def test_a_write_over_the_websocket_is_refused_whichever_name_it_gives():
    start = {
        "type": "start",
        "id": "1",
        "payload": {
            "query": 'subscription S { pipelineRunLogs(runId: "x") { __typename } } '
            + SET_LIMIT.replace("mutation", "mutation M"),
            "operationName": "S",
            "operation_name": None,
        },
    }
    passed = relayed_message(json.dumps(start)).message
    assert passed is not None and "setConcurrencyLimit" not in passed["payload"]["query"]
    start["payload"] = {"query": SET_LIMIT}
    refused = refusal(relayed_message, json.dumps(start))
    assert (refused.status, refused.attempted) == (400, "setConcurrencyLimit")


def test_websocket_messages_go_on_in_the_doors_words_only():
    init = relayed_message(json.dumps({"type": "connection_init", "payload": {"x": 1}, "y": 2}))
    assert init.message == {"type": "connection_init", "payload": {"x": 1}}
    assert relayed_message('{"type": "stop", "id": "1", "z": 3}').message == {
        "type": "stop",
        "id": "1",
    }
    for bad in ('{"type": "start"}', "[]", "not json", '{"type": "ka"}'):
        assert refusal(relayed_message, bad).status == 400
    two_names = {
        "type": "start",
        "id": "1",
        "payload": {"query": "{ version }", "operationName": "A", "operation_name": "B"},
    }
    assert refusal(relayed_message, json.dumps(two_names)).status == 400


# -- 6 and 7. HTTPS from configuration ---------------------------------------------------------


def connection(peer: str, **headers: str) -> HTTPConnection:
    scope = {
        "type": "http",
        "client": (peer, 50000),
        "headers": [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return HTTPConnection(scope)


def test_the_host_header_decides_nothing():
    from_elsewhere = connection(
        "127.0.0.1", host="localhost", x_door_scheme="http", x_door_peer="203.0.113.9"
    )
    arrival = arrival_of(from_elsewhere)
    assert (arrival.https, arrival.local, arrival.client) == (False, False, "203.0.113.9")


def test_a_load_balancers_https_is_believed_only_when_it_is_trusted():
    behind = connection(
        "127.0.0.1",
        x_door_scheme="http",
        x_door_peer="10.0.0.5",
        x_door_peer_proto="https",
        x_door_client="198.51.100.7",
    )
    assert not arrival_of(behind).https
    trusted = arrival_of(behind, parse_networks("10.0.0.0/24, 192.0.2.1"))
    assert (trusted.https, trusted.local, trusted.client) == (True, False, "198.51.100.7")


def test_nginx_headers_are_believed_only_from_this_machine():
    spoofed = connection("203.0.113.9", x_door_scheme="https", x_door_peer="127.0.0.1")
    assert (arrival_of(spoofed).https, arrival_of(spoofed).local) == (False, False)
    local = connection("127.0.0.1")  # straight to the admin API, on this machine
    assert (arrival_of(local).https, arrival_of(local).local) == (False, True)
    tls = connection("::1", x_door_scheme="https", x_door_peer="192.0.2.4")
    assert (arrival_of(tls).https, arrival_of(tls).local) == (True, False)


def test_a_trusted_proxy_that_is_not_an_address_is_refused():
    with pytest.raises(ValueError, match=r"'lb\.example\.com' is not an address"):
        parse_networks("10.0.0.5, lb.example.com")


# -- the schema ---------------------------------------------------------------------------------


def test_run_starting_lists_every_argument_of_dagsters_mutations_that_holds_run_tags(
    dagster_schema,
):
    found: dict[str, dict[str, tuple[str, ...]]] = {}
    mutation = dagster_schema.mutation_type
    assert mutation is not None
    for name, field in mutation.fields.items():
        for argument, definition in field.args.items():
            for path in tag_paths(get_named_type(definition.type)):
                found.setdefault(name, {})[argument] = path
    assert found == RUN_STARTING


def tag_paths(named: GraphQLNamedType, seen: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Where, inside an input type, lists of `ExecutionTag` are."""
    if not isinstance(named, GraphQLInputObjectType) or named.name in seen:
        return []
    paths: list[tuple[str, ...]] = []
    for key, field in named.fields.items():
        inner = get_named_type(field.type)
        if inner.name == "ExecutionTag":
            paths.append((key,))
        paths += [(key, *path) for path in tag_paths(inner, (*seen, named.name))]
    return paths


@pytest.fixture(scope="module")
def dagster_schema() -> GraphQLSchema:
    from dagster_graphql.schema import create_schema

    return create_schema().graphql_schema


# -- the property -------------------------------------------------------------------------------

DOCUMENTS = [
    "{ version }",
    "query Q { version }",
    SET_LIMIT,
    'mutation Limit { setConcurrencyLimit(concurrencyKey: "k", limit: 3) }',
    LAUNCH,
    "mutation { setNuxSeen }",
    "query Q { version } mutation M { reloadWorkspace { __typename } }",
    'subscription S { pipelineRunLogs(runId: "x") { __typename } }',
    'mutation L($p: ExecutionParams = {selector: {jobName: "j"}}) {'
    " launchPipelineExecution(executionParams: $p) { __typename } }",
    "mutation L($p: ExecutionParams!) { a: launchRun(executionParams: $p) { __typename }"
    " b: setNuxSeen }",
    "{ ...F } fragment F on Query { version }",
    "mutation { ...F } fragment F on Mutation { reloadWorkspace { __typename } }",
]
CONTENT_TYPES = [
    None,
    "application/json",
    "application/graphql",
    "text/plain",
    "application/x-www-form-urlencoded",
    "application/graphql; x=application/json",
    "application/json, application/graphql",
    "application/json; charset=utf-8",
]


WHERE = ["body", "url", "both"]
NAMES = [None, "Q", "M", "Limit", "L", "S"]
VARIABLES = [None, {"p": PARAMS}, {"executionParams": PARAMS}]


def every_request() -> Iterator[tuple[str, str, str | None, bytes]]:
    """Every request of a grammar of the ways anyone might send one: each document in the
    body, in the URL, or both, with each operation name, under each content type.
    """
    for method, document, name, variables, content_type, where in itertools.product(
        ["GET", "POST"], DOCUMENTS, NAMES, VARIABLES, CONTENT_TYPES, WHERE
    ):
        fields: dict[str, Any] = {"query": document}
        if name:
            fields["operationName"] = name
        if variables is not None:
            fields["variables"] = variables
        url = urlencode({k: json.dumps(v) if isinstance(v, dict) else v for k, v in fields.items()})
        query_string = url if where in ("url", "both") else ""
        if where == "url" or method == "GET":
            body = b""
        elif content_type == "application/graphql":
            body = document.encode()
        else:
            body = json.dumps(fields).encode()
        yield method, query_string, content_type, body


def test_the_webserver_runs_a_write_only_when_the_door_recorded_it():
    outcomes: Counter[str] = Counter()
    for request in every_request():
        for access in Access:
            outcomes[what_the_webserver_runs(*request, access)] += 1
    # The grammar reaches every outcome: the check above is not vacuous.
    assert set(outcomes) == {"refused", "graphiql", "query", "write", "bookkeeping"}, outcomes


def what_the_webserver_runs(
    method: str, query_string: str, content_type: str | None, body: bytes, access: Access
) -> str:
    try:
        passage = passage_of(method, query_string, content_type, body, access)
    except Refused:
        return "refused"
    if passage.operation is None:
        assert method == "GET" and not query_string  # the GraphiQL page: nothing runs
        return "graphiql"
    passed_on = sent(passage)
    # Read exactly as Dagster's webserver reads a POSTed JSON body, and executes it.
    document = parse(passed_on["query"])
    operation = get_operation_ast(document, passed_on.get("operationName"))
    assert operation is not None
    fields = {getattr(selection, "name").value for selection in operation.selection_set.selections}
    writes = operation.operation is OperationType.MUTATION and bool(fields - {"setNuxSeen"})
    assert writes == (passage.write is not None), (method, query_string, content_type, body)
    if passage.write is None:
        return "bookkeeping" if operation.operation is OperationType.MUTATION else "query"
    assert access is Access.ADMIN
    for name, variable in passed_on["variables"].items():
        tags = variable["executionMetadata"]["tags"]
        mine = [tag for tag in tags if tag["key"] == TRIGGERED_BY_TAG]
        assert mine == [{"key": TRIGGERED_BY_TAG, "value": ADMIN}], (name, passed_on)
    return "write"


# -- 8. reading off the event loop ---------------------------------------------------------------


def test_a_request_is_read_off_the_event_loop_which_goes_on_meanwhile():
    """The reading waits for the event loop to move on: read on the loop, it never would."""
    released = threading.Event()

    def reading() -> str:
        assert released.wait(timeout=60), "the event loop stood still while a request was read"
        return "read"

    async def both() -> str:
        read = asyncio.ensure_future(read_off_the_loop(reading))
        await asyncio.sleep(0)
        released.set()  # the loop runs this while the reader waits in its thread
        return await read

    assert asyncio.run(both()) == "read"


def test_a_reading_that_takes_too_long_is_refused_not_waited_for():
    stop = threading.Event()

    def endless() -> None:
        stop.wait(timeout=60)

    try:
        refused = refusal(asyncio.run, read_off_the_loop(endless, deadline=0.2))
    finally:
        stop.set()
    assert refused.status == 503


def test_the_uis_label_in_the_url_of_a_post_is_dropped_and_nothing_else_is_taken():
    body = json.dumps({"query": "query RunsRoot { version }"}).encode()
    labelled = passage_of("POST", "op=RunsRoot", JSON, body, Access.ADMIN)
    assert sent(labelled)["operationName"] == "RunsRoot"
    for query_string in ("op=A&op=B", "op=A&query=%7Bversion%7D", "x", "&"):
        refused = refusal(passage_of, "POST", query_string, JSON, body, Access.ADMIN)
        assert refused.status == 400, query_string


def test_the_operation_goes_on_with_the_fragments_it_uses_and_no_other():
    document = (
        "query Q { ...A } "
        "fragment A on Query { ... on Query { ...B } } "
        "fragment B on Query { version } "
        "fragment Unused on Query { version } "
        "mutation M { ...Unused }"
    )
    passed = sent(post({"query": document, "operationName": "Q"}))["query"]
    assert "fragment A" in passed and "fragment B" in passed
    assert "Unused" not in passed and "mutation" not in passed
    missing = {"query": "query Q { ...Nowhere }"}
    assert "lacks: Nowhere" in refusal(post, missing).reason
