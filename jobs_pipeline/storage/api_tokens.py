"""Admin-API tokens: issued for an existing app user, stored only as a hash, revocable.

Who is an admin is the app's word: `users.role` is read at every request, so a
demoted user loses access at once, whatever tokens they hold.
"""

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, func, insert, or_, select, update

from jobs_pipeline.storage.app_tables import users
from jobs_pipeline.storage.project_tables import api_tokens
from jobs_pipeline.storage.users import ADMIN_ROLE

TOKEN_PREFIX = "jpa_"  # noqa: S105 - a marker that makes leaked tokens easy to find


class UnknownUser(LookupError):
    """No app user has that email."""


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    token_id: int
    user_id: uuid.UUID
    email: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN_ROLE


def issue_token(connection: Connection, email: str) -> tuple[int, str]:
    """A new token for the user with `email`: (its id, the token, shown once)."""
    user_id = connection.execute(
        select(users.c.id).where(func.lower(users.c.email) == email.strip().lower())
    ).scalar()
    if user_id is None:
        raise UnknownUser(f"no app user has the email {email.strip()!r}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_id = connection.execute(
        insert(api_tokens)
        .values(user_id=user_id, token_sha256=token_digest(token))
        .returning(api_tokens.c.id)
    ).scalar_one()
    return int(token_id), token


@dataclass(frozen=True)
class TokenListing:
    token_id: int
    email: str | None  # None once the app has deleted the user
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def list_tokens(connection: Connection) -> list[TokenListing]:
    """Every token ever issued, oldest first, with its user's email as it is now."""
    t = api_tokens.c
    rows = connection.execute(
        select(t.id, users.c.email, t.created_at, t.last_used_at, t.revoked_at)
        .select_from(api_tokens.outerjoin(users, users.c.id == t.user_id))
        .order_by(t.id)
    )
    return [TokenListing(int(row[0]), row[1], row[2], row[3], row[4]) for row in rows]


def revoke_token(connection: Connection, token_id: int) -> bool:
    revoked = connection.execute(
        update(api_tokens)
        .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
        .returning(api_tokens.c.id)
    ).first()
    return revoked is not None


def authenticate(connection: Connection, token: str) -> Caller | None:
    """The caller a live token belongs to, with the user's role as it is now; None
    for an unknown or revoked token, or one whose user no longer exists.
    """
    digest = token_digest(token)
    row = connection.execute(
        select(api_tokens.c.id, api_tokens.c.token_sha256, users.c.id, users.c.email, users.c.role)
        .join(users, users.c.id == api_tokens.c.user_id)
        .where(api_tokens.c.token_sha256 == digest, api_tokens.c.revoked_at.is_(None))
    ).first()
    # The lookup is by digest; comparing it again in constant time keeps the check
    # itself free of timing differences.
    if row is None or not hmac.compare_digest(row[1], digest):
        return None
    connection.execute(
        update(api_tokens).where(api_tokens.c.id == row[0]).values(last_used_at=func.now())
    )
    return Caller(token_id=int(row[0]), user_id=row[2], email=str(row[3]), role=str(row[4]))


# How stale `last_used_at` may grow for a signed-in session: the UI checks it on every
# request, and writing it each time would be a write per page asset.
LAST_USED_EVERY = timedelta(minutes=1)


def caller_of_token(connection: Connection, token_id: int) -> Caller | None:
    """The caller a live token id belongs to, with the user's role as it is now: what a
    session signed in with that token is worth at this moment. None once the token is
    revoked or its user deleted.
    """
    row = connection.execute(
        select(api_tokens.c.id, users.c.id, users.c.email, users.c.role)
        .join(users, users.c.id == api_tokens.c.user_id)
        .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    connection.execute(
        update(api_tokens)
        .where(
            api_tokens.c.id == token_id,
            or_(
                api_tokens.c.last_used_at.is_(None),
                api_tokens.c.last_used_at < func.now() - LAST_USED_EVERY,
            ),
        )
        .values(last_used_at=func.now())
    )
    return Caller(token_id=int(row[0]), user_id=row[1], email=str(row[2]), role=str(row[3]))
