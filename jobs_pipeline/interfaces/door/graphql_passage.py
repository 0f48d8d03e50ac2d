"""The UI's GraphQL over HTTP through the door: read, then refused, or written again and
passed on, a write recorded first.

    GET, POST /door/graphql   (nginx sends /graphql, in every spelling, here)

What reaches the webserver is never the request as it came: it is a POST the door made
from what it read (`graphql_reading`), so the webserver reads exactly what the door
read. A request the door cannot read with certainty is refused, and the refusal is
recorded under the person who sent it.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import anyio
import httpx
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from graphql import OperationType

from jobs_pipeline.interfaces.door.graphql_reading import (
    JSON,
    Operation,
    Refused,
    get_request,
    operation_of,
    post_request,
)
from jobs_pipeline.interfaces.door.session import Access, Holder
from jobs_pipeline.interfaces.door.signing_in import limited_body
from jobs_pipeline.interfaces.door.state import Door, NotAllowed, door_of
from jobs_pipeline.interfaces.door.ui_writes import UiWrite, WriteOutcome, outcome_of, ui_write
from jobs_pipeline.redaction import redact

log = logging.getLogger("jobs_pipeline.door")

# The largest GraphQL request the UI itself sends is 9.5 KB (docs/deploying.md, "The
# door"); nginx's door file caps the body at the same size.
GRAPHQL_BODY_LIMIT = 64 * 1024
# Reading a request is pure work off the event loop, two at a time at most, so no
# request, however large, holds up another's sign-in; one not read in time is refused.
READ_DEADLINE_SECONDS = 10.0
READERS = 2
WEBSERVER_SILENT = "the Dagster webserver did not answer the door"
# What the record keeps of a refused request's text: enough to see what was tried.
TRIED_EXCERPT = 500
NOT_PASSED_BACK = frozenset(
    {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive"}
)

router = APIRouter(include_in_schema=False)
readers = anyio.CapacityLimiter(READERS)
Read = TypeVar("Read")


@dataclass(frozen=True)
class Passage:
    """What the door passes on for a request: its operation (None for a GET that asks
    for nothing: the webserver's GraphiQL page), and the write it makes, if any.
    """

    operation: Operation | None
    write: UiWrite | None


def passage_of(
    method: str, query_string: str, content_type: str | None, body: bytes, access: Access
) -> Passage:
    """How the door reads a request to its GraphQL from someone with `access`; Refused
    when it cannot pass it on.
    """
    if method == "GET":
        if body:
            raise Refused(400, "a GraphQL GET through the door has no body")
        request = get_request(parse_qsl(query_string, keep_blank_values=True))
        if request is None:
            return Passage(None, None)
    else:
        request = post_request(query_string, content_type, body)
    operation = operation_of(request)
    if operation.kind is OperationType.SUBSCRIPTION:
        raise Refused(400, "subscriptions go over the websocket")
    if operation.kind is OperationType.QUERY:
        return Passage(operation, None)
    if method == "GET":
        raise Refused(400, "a mutation through the door is POSTed", attempted=fields_of(operation))
    write = ui_write(operation)
    if write is not None and access is not Access.ADMIN:
        raise Refused(
            403,
            "viewers see the UI and change nothing in it: ask an admin",
            attempted=write.action,
        )
    return Passage(operation, write)


def fields_of(operation: Operation) -> str:
    names = [
        selection.name.value
        for selection in operation.definition.selection_set.selections
        if hasattr(selection, "name")
    ]
    return ", ".join(names) or "(no fields)"


def graphql_error(status: int, message: str) -> JSONResponse:
    """An answer the UI shows as it shows the webserver's own errors."""
    return JSONResponse({"data": None, "errors": [{"message": message}]}, status_code=status)


@router.api_route("/door/graphql", methods=["GET", "POST"])
async def graphql(request: Request) -> Response:
    door = door_of(request)
    holder = await run_in_threadpool(door.holder_of, request)
    if holder is None:
        return graphql_error(401, "Not signed in: sign in at /door/sign-in")
    if isinstance(holder, NotAllowed):
        return graphql_error(403, holder.reason)
    try:
        passage = await read(request, holder)
    except Refused as refusal:
        await record_refusal(door, request, holder, refusal)
        return graphql_error(refusal.status, refusal.reason)
    if passage.operation is None:
        page = door.client.get(graphql_url(door, holder), headers=page_headers(request))
        return await relayed(page)
    if passage.write is None:
        return await relayed(door_post(door, holder, passage.operation.body()))
    return await recorded_write(door, holder, passage.write)


async def read(request: Request, holder: Holder) -> Passage:
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise Refused(403, "GraphQL through the door is for the UI of this site only")
    body = await limited_body(request, GRAPHQL_BODY_LIMIT)
    if body is None:
        raise Refused(
            413, f"a GraphQL request through the door is at most {GRAPHQL_BODY_LIMIT // 1024} KB"
        )
    return await read_off_the_loop(
        passage_of,
        request.method,
        request.url.query,
        request.headers.get("content-type"),
        body,
        holder.access,
    )


async def read_off_the_loop(
    reading: Callable[..., Read], *arguments: Any, deadline: float = READ_DEADLINE_SECONDS
) -> Read:
    """`reading(*arguments)` in a thread of the door's readers, answered within the
    deadline: parsing a large document never stalls the event loop, and a reader that
    takes too long is not waited for.
    """
    try:
        with anyio.fail_after(deadline):
            return await anyio.to_thread.run_sync(
                reading, *arguments, limiter=readers, abandon_on_cancel=True
            )
    except TimeoutError:
        raise Refused(503, "the door could not read the request in time; try again") from None


async def record_refusal(door: Door, request: Request, holder: Holder, refusal: Refused) -> None:
    attempted = refusal.attempted or f"{request.method} /graphql"
    detail = {
        "method": request.method,
        "contentType": (request.headers.get("content-type") or "")[:200],
        "urlParameters": sorted({name for name, _ in request.query_params.multi_items()})[:20],
        "tried": tried_text(request),
    }
    log.warning("door: refused %s from %s: %s", attempted, holder.email, refusal.reason)
    await run_in_threadpool(door.record_refusal, holder, attempted, detail, refusal.reason)


def tried_text(request: Request) -> str:
    """What the request asked, as far as it shows without reading it: the `query` it
    carried in its URL, if any (a body is not kept).
    """
    query = request.query_params.get("query") or ""
    return redact(query[:TRIED_EXCERPT])


async def recorded_write(door: Door, holder: Holder, write: UiWrite) -> Response:
    """Recorded first, then passed on with its runs tagged, then finished with its outcome:
    a write never reaches the webserver unrecorded.
    """
    write.named = await run_in_threadpool(door.state_names, write)
    action_id = await run_in_threadpool(door.record, holder, write)
    body = write.tagged(f"ui:{holder.email}").body()
    try:
        answer = await door_post(door, holder, body)
    except httpx.HTTPError:
        unanswered = WriteOutcome([], None, f"error: {WEBSERVER_SILENT}")
        await run_in_threadpool(door.finish, action_id, unanswered)
        return graphql_error(502, WEBSERVER_SILENT)
    outcome = outcome_of(write, answer.status_code, answer.content)
    await run_in_threadpool(door.finish, action_id, outcome)
    log.info(
        "door: %s %s -> %s%s",
        holder.email,
        write.summary(),
        outcome.outcome,
        f" (runs {', '.join(outcome.run_ids)})" if outcome.run_ids else "",
    )
    return relayed_answer(answer)


def graphql_url(door: Door, holder: Holder) -> str:
    return f"{door.settings.webserver_for(holder.access)}/graphql"


async def door_post(door: Door, holder: Holder, body: bytes) -> httpx.Response:
    """The one request the webserver's GraphQL gets from the door: a POST of JSON the
    door wrote, with no query string and no header of the browser's.
    """
    headers = {"Content-Type": JSON, "Accept": JSON}
    return await door.client.post(graphql_url(door, holder), content=body, headers=headers)


def page_headers(request: Request) -> dict[str, str]:
    """A GET that asks for nothing gets the webserver's GraphiQL page, if it accepts HTML."""
    return {"Accept": request.headers.get("accept", "")[:200]}


async def relayed(answering: Any) -> Response:
    try:
        return relayed_answer(await answering)
    except httpx.HTTPError:
        return graphql_error(502, WEBSERVER_SILENT)


def relayed_answer(answer: httpx.Response) -> Response:
    headers = {k: v for k, v in answer.headers.items() if k.lower() not in NOT_PASSED_BACK}
    return Response(answer.content, status_code=answer.status_code, headers=headers)
