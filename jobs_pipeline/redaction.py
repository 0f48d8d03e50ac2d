"""Secrets kept out of what people read: alerts, logs, the API's and the door's answers,
the metrics and `doctor`.

A secret comes from the environment only; whatever text is shown is searched for the
values of the variables that hold one (and for the password in a database URL) and each
is replaced by `***`. At the bottom of the package, so every layer may use it.
"""

import os
from collections.abc import Iterable

from sqlalchemy.engine import make_url

SECRET_VARIABLES = ("SMTP_PASSWORD", "ALERT_WEBHOOK_URL", "HEARTBEAT_URL", "UI_SESSION_SECRET")
URL_VARIABLES = ("DATABASE_URL", "DAGSTER_POSTGRES_URL")


def secrets_in_environment() -> list[str]:
    """Values that must never appear in an alert: passwords, and the webhook URL itself."""
    found = [os.environ[name] for name in SECRET_VARIABLES if os.environ.get(name)]
    for name in URL_VARIABLES:
        value = os.environ.get(name)
        if not value:
            continue
        try:
            password = make_url(value).password
        except Exception:
            password = None
        if password:
            found.append(str(password))
    return [secret for secret in found if len(secret) >= 4]


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    for secret in secrets if secrets is not None else secrets_in_environment():
        text = text.replace(secret, "***")
    return text
