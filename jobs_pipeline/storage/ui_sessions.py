"""Sessions of the door: one per sign-in, worth its API token until signed out.

The session cookie carries a random key (signed, so it cannot be made up); only the
key's SHA-256 is kept here. A session holds while it is not ended, is younger than its
maximum age, and its token is live: signing out ends it on the server, so a copy of the
cookie is worthless afterwards, wherever it went; revoking the token ends every session
signed in with it.
"""

import secrets
from datetime import timedelta

from sqlalchemy import Connection, func, insert, select, update

from jobs_pipeline.storage.api_tokens import Caller, caller_of_token, token_digest
from jobs_pipeline.storage.project_tables import api_tokens, ui_sessions


def start_session(connection: Connection, token_id: int) -> str:
    """A new session for a sign-in with token `token_id`: its key, for the cookie only."""
    key = secrets.token_urlsafe(32)
    connection.execute(insert(ui_sessions).values(key_sha256=token_digest(key), token_id=token_id))
    return key


def caller_of_session(connection: Connection, key: str, max_age: timedelta) -> Caller | None:
    """Who holds the session with `key` now, with their role as it is now; None once it
    was signed out, is older than `max_age`, or its token was revoked.
    """
    token_id = connection.execute(
        select(ui_sessions.c.token_id)
        .join(api_tokens, api_tokens.c.id == ui_sessions.c.token_id)
        .where(
            ui_sessions.c.key_sha256 == token_digest(key),
            ui_sessions.c.ended_at.is_(None),
            ui_sessions.c.started_at > func.now() - max_age,
            api_tokens.c.revoked_at.is_(None),
        )
    ).scalar()
    return None if token_id is None else caller_of_token(connection, int(token_id))


def end_session(connection: Connection, key: str) -> bool:
    """Ends the session with `key`; False when there was none still open."""
    ended = connection.execute(
        update(ui_sessions)
        .where(ui_sessions.c.key_sha256 == token_digest(key), ui_sessions.c.ended_at.is_(None))
        .values(ended_at=func.now())
        .returning(ui_sessions.c.id)
    ).first()
    return ended is not None
