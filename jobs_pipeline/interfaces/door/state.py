"""What every route of the door asks: who holds a request's session, and the record.

One `Door` for the admin API's lifetime (`opened_door`): its settings, the app
database (tokens, sessions, roles, the record), Dagster's instance (the names of
schedules and sensors), and one HTTP client for the webservers. Its methods do blocking
I/O: the routes call them off the event loop.
"""

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
import httpx
from fastapi import FastAPI, Request, WebSocket
from sqlalchemy import Engine
from starlette.requests import HTTPConnection

from jobs_pipeline.dagster_private import instigator_origin_id
from jobs_pipeline.interfaces.door.arrival import Arrival, arrival_of
from jobs_pipeline.interfaces.door.session import (
    COOKIE,
    VIEWERS_VARIABLE,
    DoorSettings,
    Holder,
    session_cookie,
    session_key_of_cookie,
)
from jobs_pipeline.interfaces.door.ui_writes import UiWrite, WriteOutcome
from jobs_pipeline.storage.api_tokens import Caller, authenticate
from jobs_pipeline.storage.ui_actions import finish_action, record_action, record_refusal
from jobs_pipeline.storage.ui_sessions import caller_of_session, end_session, start_session
from jobs_pipeline.storage.users import role_of_email


@dataclass(frozen=True)
class NotAllowed:
    """Known (a live token, or the sign-on's word), but granted nothing."""

    email: str
    reason: str


@dataclass(frozen=True)
class SignedIn:
    holder: Holder
    cookie: str  # the session's cookie, for the sign-in's answer only


class Door:
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

    def arrival(self, connection: HTTPConnection) -> Arrival:
        return arrival_of(connection, self.settings.trusted_proxies)

    def holder_of(self, connection: HTTPConnection) -> Holder | NotAllowed | None:
        """Who holds the request's session now; None when there is none (or no longer one).
        Behind a company sign-on, who the sign-on's proxy says; else the session cookie's.
        """
        if self.settings.sso_email_header is not None:
            return self.holder_of_email(connection.headers.get(self.settings.sso_email_header))
        return self.holder_of_cookie(connection.cookies.get(COOKIE))

    def holder_of_cookie(self, cookie: str | None) -> Holder | NotAllowed | None:
        key = session_key_of_cookie(self.settings, cookie)
        if key is None:
            return None
        with self.app_engine.begin() as connection:
            caller = caller_of_session(connection, key, self.settings.max_age)
        return None if caller is None else self.granted(caller)

    def holder_of_email(self, email: str | None) -> Holder | NotAllowed | None:
        if not email or not email.strip():
            return None
        with self.app_engine.connect() as connection:
            user = role_of_email(connection, email)
        if user is None:
            return NotAllowed(email.strip(), f"{email.strip()} is not a user of the app.")
        return self.access_of(*user)

    def granted(self, caller: Caller) -> Holder | NotAllowed:
        return self.access_of(caller.email, caller.role)

    def access_of(self, email: str, role: str) -> Holder | NotAllowed:
        access = self.settings.access_of(email, role)
        if access is None:
            return NotAllowed(email, not_granted(email))
        return Holder(email, access)

    def sign_in(self, token: str) -> SignedIn | NotAllowed | None:
        """A new session for `token`'s user, when the token is live and the user may
        pass; None for an unknown or revoked token.
        """
        with self.app_engine.begin() as connection:
            caller = authenticate(connection, token)
            if caller is None:
                return None
            granted = self.granted(caller)
            if isinstance(granted, NotAllowed):
                return granted
            key = start_session(connection, caller.token_id)
        return SignedIn(granted, session_cookie(self.settings, key))

    def sign_out(self, cookie: str | None) -> bool:
        """Ends the cookie's session on the server: a copy of the cookie opens nothing."""
        key = session_key_of_cookie(self.settings, cookie)
        if key is None:
            return False
        with self.app_engine.begin() as connection:
            return end_session(connection, key)

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

    def record_refusal(
        self, holder: Holder, attempted: str, detail: dict[str, Any], reason: str
    ) -> None:
        with self.app_engine.begin() as connection:
            record_refusal(connection, holder.email, attempted, attempted, detail, reason)

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
