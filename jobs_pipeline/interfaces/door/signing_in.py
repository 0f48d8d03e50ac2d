"""The door's own routes: nginx's check, signing in and out, and the pages that refuse.

    GET  /door/check        nginx's auth_request: 200 (and which webserver), 401 or 403
    GET  /door/sign-in      the sign-in page; POST signs in with an API token
    POST /door/sign-out     ends the session, on the server
    *    /door/forbidden    the page a refused request gets, saying why
    *    /door/slow-down    the page nginx answers too many sign-ins with (429)

Nothing here logs or answers a token or a cookie.
"""

import logging
import posixpath
from typing import Annotated
from urllib.parse import parse_qs, quote, unquote, urlsplit

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from jobs_pipeline.interfaces.door.arrival import Arrival
from jobs_pipeline.interfaces.door.pages import (
    forbidden_page,
    sign_in_page,
    signed_in_page,
    slow_down_page,
    sso_page,
)
from jobs_pipeline.interfaces.door.session import (
    ADMIN_UPSTREAM,
    COOKIE,
    VIEWER_UPSTREAM,
    Access,
    Holder,
)
from jobs_pipeline.interfaces.door.state import NotAllowed, SignedIn, door_of

log = logging.getLogger("jobs_pipeline.door")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SIGN_IN_BODY_LIMIT = 4 * 1024
# The UI's GraphQL has a route of its own through the door; no other way reaches it.
GRAPHQL_PATH = "/graphql"

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
    door = door_of(request)
    holder = await run_in_threadpool(door.holder_of, request)
    if holder is None:
        return Response(status_code=401, headers={"X-Door-Sign-In": sign_in_location(uri)})
    if isinstance(holder, NotAllowed):
        return Response(status_code=403)
    if method.upper() not in SAFE_METHODS or reaches_graphql(uri):
        # Writes reach the webserver only through the door's GraphQL, where they are read
        # and recorded.
        reason = "the UI changes things only through its GraphQL, which the door reads"
        detail = {"method": method, "path": urlsplit(uri).path[:200]}
        await run_in_threadpool(door.record_refusal, holder, f"{method} page", detail, reason)
        return Response(status_code=403)
    upstream = ADMIN_UPSTREAM if holder.access is Access.ADMIN else VIEWER_UPSTREAM
    return Response(status_code=200, headers={"X-Door-Upstream": upstream})


def reaches_graphql(uri: str) -> bool:
    """Whether a URI the webserver would route to its GraphQL came this way (nginx sends
    every spelling of /graphql it knows to the door's own route; this holds if it missed one).
    """
    path = unquote(urlsplit(uri).path)
    normal = posixpath.normpath("/" + path.lstrip("/")).rstrip("/")
    return normal == GRAPHQL_PATH or path.rstrip("/") == GRAPHQL_PATH


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
    door = door_of(request)
    arrival = door.arrival(request)
    refusal = refused_post(request, arrival)
    if refusal is not None:
        return sign_in_page("/", message=refusal[1], status=refusal[0])
    if door.settings.sso_email_header is not None:
        return sso_page(door.settings.sso_email_header)
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
    signed_in = await run_in_threadpool(door.sign_in, token)
    if signed_in is None:
        log.warning("door: sign-in with an unknown or revoked token from %s", arrival.client)
        return sign_in_page(
            next_path, message="That token is not known, or has been revoked.", status=401
        )
    if isinstance(signed_in, NotAllowed):
        log.warning("door: %s may not use the UI (from %s)", signed_in.email, arrival.client)
        return forbidden_page(None, signed_in.reason)
    return signed_in_answer(signed_in, next_path, arrival, door.settings.max_age_seconds)


def signed_in_answer(
    signed_in: SignedIn, next_path: str, arrival: Arrival, max_age_seconds: int
) -> Response:
    holder = signed_in.holder
    log.info("door: %s signed in as %s from %s", holder.email, holder.access.value, arrival.client)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        COOKIE,
        signed_in.cookie,
        max_age=max_age_seconds,
        path="/",
        # Without HTTPS only on this machine itself (refused_post), where the cookie
        # never leaves it; over HTTPS, never sent without it.
        secure=arrival.https,
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/door/sign-out")
async def sign_out(request: Request) -> Response:
    door = door_of(request)
    refusal = refused_post(request, door.arrival(request))
    if refusal is not None:
        return forbidden_page(None, refusal[1])
    await run_in_threadpool(door.sign_out, request.cookies.get(COOKIE))
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


@router.api_route("/door/slow-down", methods=["GET", "HEAD", "POST"])
async def slow_down() -> Response:
    """The page nginx answers with when an address tries to sign in too often (429)."""
    return slow_down_page()


def refused_post(request: Request, arrival: Arrival) -> tuple[int, str] | None:
    """A form post the door does not take: sent from another site, or over plain HTTP
    from anywhere but this machine itself (where the session cookie, Secure, would never
    come back, and the token would have crossed the network in the clear).
    """
    host = request.headers.get("host")
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != host:
        return 403, "This form can only be sent from this site."
    if not arrival.https and not arrival.local:
        return 400, (
            "Signing in needs HTTPS here: put TLS in front of the door, or list the load"
            " balancer that terminates it in UI_TRUSTED_PROXIES (docs/deploying.md), or"
            " sign in on this machine itself."
        )
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return 415, "The sign-in form is sent as application/x-www-form-urlencoded."
    return None


def first_value(form: dict[str, list[str]], name: str) -> str:
    values = form.get(name) or [""]
    return values[0]


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
