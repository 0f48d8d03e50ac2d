"""The app's users as an operator names them: by id or by email."""

import uuid

from sqlalchemy import Connection, func, select

from jobs_pipeline.storage.app_tables import users

# The app's `users.role` of its admins (the other is 'user').
ADMIN_ROLE = "admin"


def find_user(connection: Connection, id_or_email: str) -> uuid.UUID:
    """The id of the user named by id or email; a clear error when there is none."""
    needle = id_or_email.strip()
    try:
        condition = users.c.id == uuid.UUID(needle)
    except ValueError:
        condition = func.lower(users.c.email) == needle.lower()
    found = connection.execute(select(users.c.id).where(condition).limit(2)).scalars().all()
    if len(found) != 1:
        raise LookupError(f"no user with id or email {needle!r}")
    user_id: uuid.UUID = found[0]
    return user_id


def role_of_email(connection: Connection, email: str) -> tuple[str, str] | None:
    """(email as the app spells it, role) of the user with `email` in any case; None when
    no user, or more than one, has it.
    """
    found = connection.execute(
        select(users.c.email, users.c.role)
        .where(func.lower(users.c.email) == email.strip().lower())
        .limit(2)
    ).all()
    return (str(found[0][0]), str(found[0][1])) if len(found) == 1 else None
