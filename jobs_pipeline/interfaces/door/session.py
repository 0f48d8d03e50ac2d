"""A signed-in session: a session's key in a signed cookie, worth what its token is now.

The cookie holds only the random key of a session the door keeps
(`jobs_pipeline.ui_sessions`), signed by itsdangerous with `UI_SESSION_SECRET` and
stamped with the time of sign-in: it cannot be forged or altered, and it is worthless
once signed out, or a working day after sign-in. What it grants is read afresh at every
request: the session must still be open, its token live, and its user an admin
(`users.role`) or listed in `UI_VIEWERS`. A revoked token or a demoted admin loses the
UI at their next request.
"""

import enum
import os
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from itsdangerous import BadData, URLSafeTimedSerializer

from jobs_pipeline.interfaces.door.arrival import Network, parse_networks
from jobs_pipeline.storage.users import ADMIN_ROLE

COOKIE = "jobs_pipeline_ui"
SECRET_VARIABLE = "UI_SESSION_SECRET"  # noqa: S105 - the variable's name, not a secret
VIEWERS_VARIABLE = "UI_VIEWERS"
TRUSTED_PROXIES_VARIABLE = "UI_TRUSTED_PROXIES"
SESSION_HOURS = 8  # a working day
MIN_SECRET_LENGTH = 32
# The upstream names nginx's configuration gives the two webservers (deploy/nginx/).
ADMIN_UPSTREAM = "dagster_webserver"
VIEWER_UPSTREAM = "dagster_webserver_read_only"


class DoorMisconfigured(ValueError):
    """A setting the door needs is missing or unusable; the message says which and how."""


class Access(enum.Enum):
    ADMIN = "admin"
    VIEWER = "viewer"


@dataclass(frozen=True)
class Holder:
    """Who holds a session, and what it grants now."""

    email: str
    access: Access


@dataclass(frozen=True)
class DoorSettings:
    secret: str
    viewers: frozenset[str]
    webserver_url: str
    read_only_webserver_url: str
    # With a company sign-on in front: the request header its proxy names the user in.
    sso_email_header: str | None = None
    session_hours: float = SESSION_HOURS
    # Load balancers in front of nginx whose `X-Forwarded-Proto: https` is believed.
    trusted_proxies: tuple[Network, ...] = ()

    @classmethod
    def from_environment(
        cls, webserver_url: str, read_only_webserver_url: str, sso_email_header: str | None = None
    ) -> "DoorSettings":
        secret = os.environ.get(SECRET_VARIABLE, "")
        if sso_email_header is not None and not sso_email_header.strip():
            raise DoorMisconfigured("--ui-sso-email-header names a request header")
        if sso_email_header is None and len(secret) < MIN_SECRET_LENGTH:
            raise DoorMisconfigured(
                f"the door signs its session cookies with {SECRET_VARIABLE}, which must be set"
                f" to at least {MIN_SECRET_LENGTH} random characters (e.g. the output of"
                " `python3 -c 'import secrets; print(secrets.token_urlsafe(48))'`), the same for"
                " every admin API process"
            )
        try:
            trusted_proxies = parse_networks(os.environ.get(TRUSTED_PROXIES_VARIABLE, ""))
        except ValueError as problem:
            raise DoorMisconfigured(
                f"{TRUSTED_PROXIES_VARIABLE} lists the addresses (or networks) of the load"
                f" balancers in front of nginx, separated by commas: {problem}"
            ) from None
        return cls(
            secret=secret,
            trusted_proxies=trusted_proxies,
            viewers=parse_viewers(os.environ.get(VIEWERS_VARIABLE, "")),
            webserver_url=checked_url("--ui", webserver_url),
            read_only_webserver_url=checked_url("--ui-read-only", read_only_webserver_url),
            sso_email_header=sso_email_header.strip() if sso_email_header else None,
        )

    @property
    def max_age(self) -> timedelta:
        return timedelta(hours=self.session_hours)

    @property
    def max_age_seconds(self) -> int:
        return int(self.max_age.total_seconds())

    def signer(self) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self.secret, salt="jobs-pipeline-ui-session")

    def access_of(self, email: str, role: str) -> Access | None:
        """Admins by the app's own word (`users.role`); viewers by this deployment's list."""
        if role == ADMIN_ROLE:
            return Access.ADMIN
        if email.strip().lower() in self.viewers:
            return Access.VIEWER
        return None

    def webserver_for(self, access: Access) -> str:
        return self.webserver_url if access is Access.ADMIN else self.read_only_webserver_url


def parse_viewers(listed: str) -> frozenset[str]:
    """`UI_VIEWERS`: emails separated by commas (or white space), in any case."""
    return frozenset(email.lower() for email in listed.replace(",", " ").split() if email.strip())


def checked_url(option: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DoorMisconfigured(f"{option} takes the webserver's URL, e.g. http://127.0.0.1:3000")
    return url.rstrip("/")


def session_cookie(settings: DoorSettings, session_key: str) -> str:
    return settings.signer().dumps({"session": session_key})


def session_key_of_cookie(settings: DoorSettings, cookie: str | None) -> str | None:
    """The session key a cookie was signed for; None for no cookie, or a forged, altered,
    malformed or expired one.
    """
    if not cookie:
        return None
    try:
        content = settings.signer().loads(cookie, max_age=settings.max_age_seconds)
    except BadData:
        return None
    key = content.get("session") if isinstance(content, dict) else None
    return key if isinstance(key, str) and key else None
