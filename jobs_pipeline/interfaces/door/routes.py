"""The door's routes on the admin API: sign-in, nginx's check, and the UI's GraphQL.

    GET  /door/check        nginx's auth_request: 200 (and which webserver), 401 or 403
    GET  /door/sign-in      the sign-in page; POST signs in with an API token
    POST /door/sign-out     ends the session
    *    /door/forbidden    the page a refused request gets, saying why
    GET, POST, websocket /door/graphql
                            the UI's GraphQL (nginx sends /graphql here): checked, passed to
                            the holder's webserver, each write recorded and its runs tagged

Nothing here logs or answers a token or a cookie.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlsplit

import dagster as dg
import httpx
from fastapi import APIRouter, FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy import Engine
from starlette.requests import HTTPConnection
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException
from websockets.typing import Subprotocol

from jobs_pipeline.dagster_private import instigator_origin_id
from jobs_pipeline.interfaces.door.pages import (
    forbidden_page,
    sign_in_page,
    signed_in_page,
    sso_page,
)
from jobs_pipeline.interfaces.door.session import (
    ADMIN_UPSTREAM,
    COOKIE,
    VIEWER_UPSTREAM,
    VIEWERS_VARIABLE,
    Access,
    DoorSettings,
    Holder,
    is_local,
    session_cookie,
    token_of_cookie,
)
from jobs_pipeline.interfaces.door.ui_writes import (
    RefusedWrite,
    UiWrite,
    WriteOutcome,
    is_mutation_query,
    is_subscription,
    outcome_of,
    ui_write,
)
from jobs_pipeline.storage.api_tokens import authenticate, caller_of_token
from jobs_pipeline.storage.ui_actions import finish_action, record_action
from jobs_pipeline.storage.users import role_of_email

log = logging.getLogger("jobs_pipeline.door")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SIGN_IN_BODY_LIMIT = 4 * 1024
GRAPHQL_BODY_LIMIT = 8 * 1024 * 1024
# An open websocket re-checks its session this often: a revoked token or a demoted
# admin loses the live views within it.
RECHECK_SECONDS = 30.0
# Headers that belong to one hop, or to the door (its cookie), never passed on.
NOT_PASSED_ON = frozenset(
    {
        "host",
        "cookie",
        "authorization",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "transfer-encoding",
        "proxy-authorization",
        "proxy-connection",
        "content-length",
        "accept-encoding",
    }
)
NOT_PASSED_BACK = frozenset(
    {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive"}
)


@dataclass(frozen=True)
class NotAllowed:
    """Known (a live token, or the sign-on's word), but granted nothing."""

    email: str
    reason: str


class Door:
    """What every route of the door needs: its settings, the app database, the webservers."""

    def __init__(
        self,
        settings: DoorSettings,
        app_engine: Engine,
        instance: dg.DagsterInstance,
        client: httpx.AsyncClient,
    ):
        self.settings = settings
        self.app_engine = app_engine
        self.instance = instance
        self.client = client

    def holder_of(self, connection: HTTPConnection) -> Holder | NotAllowed | None:
        """Who holds the request's session now; None when there is none (or no longer one).
        Behind a company sign-on, who the sign-on's proxy says; else the session cookie's.
        """
        if self.settings.sso_email_header is not None:
            return self.holder_of_email(connection.headers.get(self.settings.sso_email_header))
        return self.holder_of_cookie(connection.cookies.get(COOKIE))

    def holder_of_cookie(self, cookie: str | None) -> Holder | NotAllowed | None:
        token_id = token_of_cookie(self.settings, cookie)
        if token_id is None:
            return None
        with self.app_engine.begin() as connection:
            caller = caller_of_token(connection, token_id)
        return None if caller is None else self.granted(caller.email, caller.role, token_id)

    def holder_of_email(self, email: str | None) -> Holder | NotAllowed | None:
        if not email or not email.strip():
            return None
        with self.app_engine.connect() as connection:
            user = role_of_email(connection, email)
        if user is None:
            return NotAllowed(email.strip(), f"{email.strip()} is not a user of the app.")
        return self.granted(*user, None)

    def granted(self, email: str, role: str, token_id: int | None) -> Holder | NotAllowed:
        access = self.settings.access_of(email, role)
        if access is None:
            return NotAllowed(email, not_granted(email))
        return Holder(email, access, token_id)

    def sign_in(self, token: str) -> Holder | NotAllowed | None:
        with self.app_engine.begin() as connection:
            caller = authenticate(connection, token)
        return None if caller is None else self.granted(caller.email, caller.role, caller.token_id)

    def state_names(self, write: UiWrite) -> dict[str, str]:
        """The names of the schedules or sensors a write names only by their state's id."""
        origins = {instigator_origin_id(state_id) for state_id in write.state_ids()}
        if not origins:
            return {}
        names = sorted(
            state.instigator_name
            for state in self.instance.all_instigator_state()
            if state.instigator_origin_id in origins
        )
        return {"instigatorName": ",".join(names)} if names else {}

    def record(self, holder: Holder, write: UiWrite) -> int:
        with self.app_engine.begin() as connection:
            return record_action(
                connection, holder.email, write.action, write.summary(), write.detail()
            )

    def finish(self, action_id: int, outcome: WriteOutcome) -> None:
        with self.app_engine.begin() as connection:
            finish_action(
                connection,
                action_id,
                run_ids=outcome.run_ids,
                backfill_id=outcome.backfill_id,
                outcome=outcome.outcome,
            )


def not_granted(email: str) -> str:
    return (
        f"{email} is not an admin of the app (users.role) and is not listed as a viewer"
        f" ({VIEWERS_VARIABLE}): ask an operator for access."
    )


def door_of(connection: Request | WebSocket) -> Door:
    door: Door = connection.app.state.door
    return door


@contextlib.asynccontextmanager
async def opened_door(
    app: FastAPI, settings: DoorSettings, app_engine: Engine, instance: dg.DagsterInstance
) -> AsyncIterator[None]:
    """The door's state for the app's lifetime: one HTTP client for the webservers."""
    timeout = httpx.Timeout(120.0, connect=10.0)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
        app.state.door = Door(settings, app_engine, instance, client)
        yield


router = APIRouter(include_in_schema=False)


# -- nginx's check --------------------------------------------------------------------------


@router.get("/door/check")
async def check(request: Request) -> Response:
    """nginx's `auth_request`, for every request to the UI but its GraphQL. nginx passes
    the original request's URI and method; this answers 200 with the webserver to pass
    it to, 401 with where to sign in, or 403.
    """
    uri = request.headers.get("x-original-uri")
    method = request.headers.get("x-original-method")
    if not uri or not method:
        return Response("for nginx's auth_request: X-Original-URI and X-Original-Method", 400)
    holder = await run_in_threadpool(door_of(request).holder_of, request)
    if holder is None:
        return Response(status_code=401, headers={"X-Door-Sign-In": sign_in_location(uri)})
    if isinstance(holder, NotAllowed) or method.upper() not in SAFE_METHODS:
        # Writes reach the webserver only through its GraphQL, where they are recorded.
        return Response(status_code=403)
    upstream = ADMIN_UPSTREAM if holder.access is Access.ADMIN else VIEWER_UPSTREAM
    return Response(status_code=200, headers={"X-Door-Upstream": upstream})


def sign_in_location(uri: str) -> str:
    return f"/door/sign-in?next={quote(local_path(uri), safe='/')}"


def local_path(path: str | None) -> str:
    """`path` if it stays on this site (a path, not `//elsewhere` or a URL), else `/`."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    parts = urlsplit(path)
    return path if not parts.scheme and not parts.netloc else "/"


# -- signing in and out -----------------------------------------------------------------------


@router.get("/door/sign-in")
async def sign_in_form(
    request: Request, wanted: Annotated[str, Query(alias="next")] = "/"
) -> Response:
    next_path = local_path(wanted)
    door = door_of(request)
    holder = await run_in_threadpool(door.holder_of, request)
    if isinstance(holder, Holder):
        return signed_in_page(holder.email, holder.access.value, next_path)
    if isinstance(holder, NotAllowed):
        return forbidden_page(holder.email, holder.reason)
    if door.settings.sso_email_header is not None:
        return sso_page(door.settings.sso_email_header)
    ended = "Your session has ended (signed out, a working day old, or its token revoked)."
    return sign_in_page(next_path, message=ended if COOKIE in request.cookies else None)


@router.post("/door/sign-in")
async def sign_in(request: Request) -> Response:
    refusal = refused_post(request)
    if refusal is not None:
        return sign_in_page("/", message=refusal[1], status=refusal[0])
    settings = door_of(request).settings
    if settings.sso_email_header is not None:
        return sso_page(settings.sso_email_header)
    body = await limited_body(request, SIGN_IN_BODY_LIMIT)
    if body is None:
        return sign_in_page("/", message="The sign-in form is larger than it can be.", status=413)
    try:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        return sign_in_page("/", message="The sign-in form could not be read.", status=400)
    next_path = local_path(first_value(form, "next"))
    token = first_value(form, "token").strip()
    if not token:
        return sign_in_page(next_path, message="Enter your API token.", status=400)
    holder = await run_in_threadpool(door_of(request).sign_in, token)
    client = client_of(request)
    if holder is None:
        log.warning("door: sign-in with an unknown or revoked token from %s", client)
        return sign_in_page(
            next_path, message="That token is not known, or has been revoked.", status=401
        )
    if isinstance(holder, NotAllowed):
        log.warning("door: %s may not use the UI (from %s)", holder.email, client)
        return forbidden_page(None, holder.reason)
    assert holder.token_id is not None  # signed in with a token
    log.info("door: %s signed in as %s from %s", holder.email, holder.access.value, client)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        COOKIE,
        session_cookie(settings, holder.token_id),
        max_age=settings.max_age_seconds,
        path="/",
        secure=request.url.scheme == "https" or not is_local(request.headers.get("host")),
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/door/sign-out")
async def sign_out(request: Request) -> Response:
    refusal = refused_post(request)
    if refusal is not None:
        return forbidden_page(None, refusal[1])
    response = RedirectResponse("/door/sign-in", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.api_route("/door/forbidden", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
async def forbidden(request: Request) -> Response:
    """The page nginx shows a refused request (its error_page for 403)."""
    holder = await run_in_threadpool(door_of(request).holder_of, request)
    if isinstance(holder, NotAllowed):
        return forbidden_page(holder.email, holder.reason)
    if isinstance(holder, Holder):
        return forbidden_page(
            holder.email,
            "The UI changes things only through its GraphQL API, where the door records"
            " them; this request went elsewhere.",
        )
    return forbidden_page(None, "You are not signed in.")


def refused_post(request: Request) -> tuple[int, str] | None:
    """A form post the door does not take: sent from another site, or over plain HTTP
    from outside this machine (where the session cookie, Secure, would never come back).
    """
    host = request.headers.get("host")
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != host:
        return 403, "This form can only be sent from this site."
    if request.url.scheme != "https" and not is_local(host):
        return 400, (
            "Signing in needs HTTPS here: put TLS in front of the door (docs/deploying.md),"
            " or sign in on this machine itself."
        )
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return 415, "The sign-in form is sent as application/x-www-form-urlencoded."
    return None


def first_value(form: dict[str, list[str]], name: str) -> str:
    values = form.get(name) or [""]
    return values[0]


def client_of(connection: Request | WebSocket) -> str:
    return connection.client.host if connection.client else "unknown"


async def limited_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is (or says it will be) larger than `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


# -- the UI's GraphQL -------------------------------------------------------------------------

WEBSERVER_SILENT = "the Dagster webserver did not answer the door"


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
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        return graphql_error(403, "GraphQL through the door is for the UI of this site only")
    body = await limited_body(request, GRAPHQL_BODY_LIMIT)
    if body is None:
        return graphql_error(413, "The request is larger than the door takes")
    try:
        write = write_of(request, holder, body)
    except RefusedWrite as refusal:
        return graphql_error(400, str(refusal))
    if write is None:
        return await passed_on(door, request, holder, body)
    return await recorded_write(door, request, holder, write)


def write_of(request: Request, holder: Holder, body: bytes) -> UiWrite | None:
    """The write an admin's request makes; viewers' go to the read-only webserver, which
    refuses every write itself.
    """
    if holder.access is not Access.ADMIN:
        return None
    if request.method == "GET":
        params = request.query_params
        if is_mutation_query(params.get("query"), params.get("operationName")):
            raise RefusedWrite("a mutation through the door is POSTed")
        return None
    return ui_write(body, request.headers.get("content-type", ""))


async def recorded_write(door: Door, request: Request, holder: Holder, write: UiWrite) -> Response:
    """Recorded first, then passed on with its runs tagged, then finished with its outcome:
    a write never reaches the webserver unrecorded.
    """
    write.named = await run_in_threadpool(door.state_names, write)
    action_id = await run_in_threadpool(door.record, holder, write)
    body = write.tagged(f"ui:{holder.email}")
    try:
        # The tagged request is JSON, whatever it came as (`application/graphql` too).
        answer = await forward(door, request, holder, body, content_type="application/json")
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
    return relayed(answer)


async def passed_on(door: Door, request: Request, holder: Holder, body: bytes) -> Response:
    try:
        return relayed(await forward(door, request, holder, body))
    except httpx.HTTPError:
        return graphql_error(502, WEBSERVER_SILENT)


async def forward(
    door: Door,
    request: Request,
    holder: Holder,
    body: bytes,
    content_type: str | None = None,
) -> httpx.Response:
    url = f"{door.settings.webserver_for(holder.access)}/graphql"
    headers = {k: v for k, v in request.headers.items() if k.lower() not in NOT_PASSED_ON}
    if content_type is not None:
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        headers["Content-Type"] = content_type
    return await door.client.request(
        request.method,
        url,
        params=list(request.query_params.multi_items()),
        content=body if request.method == "POST" else None,
        headers=headers,
    )


def relayed(answer: httpx.Response) -> Response:
    headers = {k: v for k, v in answer.headers.items() if k.lower() not in NOT_PASSED_BACK}
    return Response(answer.content, status_code=answer.status_code, headers=headers)


@router.websocket("/door/graphql")
async def graphql_socket(websocket: WebSocket) -> None:
    """The UI's live views (run logs): subscriptions only, re-checked every half minute."""
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
                message = await websocket.receive_text()
                refusal = refused_operation(message)
                if refusal is not None:
                    await websocket.send_json(refusal)
                else:
                    await upstream.send(message)

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


def refused_operation(message: str) -> dict[str, Any] | None:
    """The webserver runs only subscriptions on its websocket; the door makes sure no
    write could ever take this way past its record.
    """
    try:
        parsed = json.loads(message)
    except json.JSONDecodeError:
        return None
    if not isinstance(parsed, dict) or parsed.get("type") not in ("start", "subscribe"):
        return None
    payload = parsed.get("payload")
    if not isinstance(payload, dict):
        payload = {}
    if is_subscription(payload.get("query"), payload.get("operationName")):
        return None
    return {
        "type": "error",
        "id": parsed.get("id"),
        "payload": {"message": "only subscriptions go over the websocket"},
    }
