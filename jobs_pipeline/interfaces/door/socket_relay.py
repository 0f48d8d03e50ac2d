"""The UI's live views (a run's logs) through the door: its GraphQL websocket, relayed.

    websocket /door/graphql   (nginx sends /graphql's upgrade here)

The webserver runs what its websocket is sent, subscriptions or not, so nothing the
browser sends is passed on as it came: each message is read (`graphql_reading`) and
written again in the door's words, a subscription's document holding that one
subscription; anything else that would run is refused and recorded. The session is
checked again every half minute: a revoked token or a demoted admin loses its live views.
"""

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from graphql import OperationType
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException
from websockets.typing import Subprotocol

from jobs_pipeline.interfaces.door.graphql_passage import (
    GRAPHQL_BODY_LIMIT,
    fields_of,
    read_off_the_loop,
)
from jobs_pipeline.interfaces.door.graphql_reading import (
    GraphQLRequest,
    Refused,
    operation_of,
    unique_keys,
    variables_of,
)
from jobs_pipeline.interfaces.door.session import Holder
from jobs_pipeline.interfaces.door.state import Door, door_of

log = logging.getLogger("jobs_pipeline.door")

# An open websocket re-checks its session this often.
RECHECK_SECONDS = 30.0
# The messages of the protocol the UI speaks (graphql-ws), and what each may carry.
CONNECTION_INIT = "connection_init"
START = "start"
STOP = "stop"
CONNECTION_TERMINATE = "connection_terminate"

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Relayed:
    """What the door does with one message from the browser: pass `message` on, or
    answer the browser with `answer` instead.
    """

    message: dict[str, Any] | None = None
    answer: dict[str, Any] | None = None


def relayed_message(text: str) -> Relayed:
    """A message from the browser, in the door's words; Refused for one that would run
    anything but a subscription, or that the door cannot read.
    """
    if len(text) > GRAPHQL_BODY_LIMIT:
        raise Refused(413, "a message over the websocket is too large")
    try:
        message = json.loads(text, object_pairs_hook=unique_keys)
    except (ValueError, RecursionError):
        raise Refused(400, "a message over the websocket is one JSON object") from None
    if not isinstance(message, dict):
        raise Refused(400, "a message over the websocket is one JSON object")
    kind = message.get("type")
    if kind == CONNECTION_INIT:
        payload = message.get("payload")
        init = {"type": CONNECTION_INIT, "payload": payload if isinstance(payload, dict) else {}}
        return Relayed(init)
    if kind == CONNECTION_TERMINATE:
        return Relayed({"type": CONNECTION_TERMINATE})
    operation_id = message.get("id")
    if not isinstance(operation_id, str | int) or isinstance(operation_id, bool):
        raise Refused(400, f"a {kind!r} message over the websocket has an id")
    if kind == STOP:
        return Relayed({"type": STOP, "id": operation_id})
    if kind != START:
        raise Refused(400, f"the door relays no websocket message of type {kind!r}")
    return Relayed({"type": START, "id": operation_id, "payload": subscription(message)})


def subscription(message: dict[str, Any]) -> dict[str, Any]:
    payload = message.get("payload")
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        raise Refused(400, "a subscription's payload holds its document as 'query'")
    names = {payload.get(key) for key in ("operationName", "operation_name")} - {None, ""}
    if len(names) > 1 or not all(isinstance(name, str) for name in names):
        raise Refused(400, "a subscription names one operation")
    try:
        request = GraphQLRequest(
            payload["query"], variables_of(payload.get("variables")), next(iter(names), None)
        )
        operation = operation_of(request)
    except Refused as refusal:
        raise Refused(refusal.status, refusal.reason, "a websocket operation") from None
    if operation.kind is not OperationType.SUBSCRIPTION:
        raise Refused(400, "only subscriptions go over the websocket", fields_of(operation))
    passed_on = operation.passed_on()
    return {"query": passed_on["query"], "variables": passed_on["variables"]}


@router.websocket("/door/graphql")
async def graphql_socket(websocket: WebSocket) -> None:
    door = door_of(websocket)
    holder = await run_in_threadpool(door.holder_of, websocket)
    origin = websocket.headers.get("origin")
    same_site = origin is None or urlsplit(origin).netloc == websocket.headers.get("host")
    if not isinstance(holder, Holder) or not same_site:
        await websocket.close(code=1008)  # before accepting: the handshake is refused (403)
        return
    base = door.settings.webserver_for(holder.access)
    url = "ws" + base.removeprefix("http") + "/graphql"
    requested = [Subprotocol(name) for name in websocket.scope.get("subprotocols", [])]
    try:
        async with connect(url, subprotocols=requested or None, open_timeout=30) as upstream:
            await websocket.accept(subprotocol=upstream.subprotocol)
            await relay(websocket, upstream, door, holder)
    except (TimeoutError, OSError, WebSocketException):
        log.warning("door: the webserver's websocket at %s did not answer", base)
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(code=1011)


async def relay(
    websocket: WebSocket, upstream: ClientConnection, door: Door, holder: Holder
) -> None:
    """Both ways until either side closes, or the session no longer holds."""

    async def from_the_browser() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                text = await websocket.receive_text()
                message = await browser_message(door, holder, text)
                if message.answer is not None:
                    await websocket.send_json(message.answer)
                if message.message is not None:
                    await upstream.send(json.dumps(message.message))

    async def from_the_webserver() -> None:
        async for message in upstream:
            text = message if isinstance(message, str) else message.decode("utf-8", "replace")
            await websocket.send_text(text)

    async def session_holds() -> None:
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            now = await run_in_threadpool(door.holder_of, websocket)
            if not isinstance(now, Holder) or now.access is not holder.access:
                log.info("door: %s's session ended; closing its live views", holder.email)
                return

    browser = asyncio.create_task(from_the_browser())
    webserver = asyncio.create_task(from_the_webserver())
    session = asyncio.create_task(session_holds())
    try:
        done, _pending = await asyncio.wait(
            [browser, webserver, session], return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in (browser, webserver, session):
            task.cancel()
        await asyncio.gather(browser, webserver, session, return_exceptions=True)
        await upstream.close()
    if browser not in done:
        # 1008: the session no longer holds; 1011: the webserver went away.
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(code=1008 if session in done else 1011)


async def browser_message(door: Door, holder: Holder, text: str) -> Relayed:
    """The message to pass on, or the refusal to answer (recorded)."""
    try:
        relayed: Relayed = await read_off_the_loop(relayed_message, text)
    except Refused as refusal:
        if refusal.attempted is not None:  # an operation that would have run: on the record
            detail = {"over": "websocket", "bytes": len(text)}
            log.warning(
                "door: refused %s from %s: %s", refusal.attempted, holder.email, refusal.reason
            )
            await run_in_threadpool(
                door.record_refusal, holder, refusal.attempted, detail, refusal.reason
            )
        error = {"message": refusal.reason}
        return Relayed(answer={"type": "error", "id": message_id(text), "payload": error})
    return relayed


def message_id(text: str) -> Any:
    with contextlib.suppress(ValueError, RecursionError, AttributeError):
        return json.loads(text).get("id")
    return None
