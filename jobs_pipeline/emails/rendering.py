"""The emails the jobs send: Jinja2 templates (plain text and HTML) and the outbox.

Queueing and delivery are separate. A job queues a message as a row of
`jobs_pipeline.email_outbox` (its `dedupe_key` makes queueing idempotent); delivery
claims one row at a time, sends it, and records the outcome in a transaction of its
own. A message is claimed (status `sending`) before it is sent and never claimed
again, so a run that dies between sending and recording cannot send it twice: the
row is later marked `unconfirmed` for an operator to look at. At-most-once, because
a second trial reminder or a second "your plan ended" is worse than a rare missing
one, and the row says so when it happens.

Each message names its template in `X-Jobs-Pipeline-Template` (for mail filters and
for whoever reads a received message), and its `Message-ID` is derived from the
outbox row's `dedupe_key` alone: an accidental resend of the same row carries the
same id, so a mail server or client that drops duplicate ids drops it. The key is
hashed, so the id carries no personal data.
"""

import hashlib
from datetime import datetime
from email.message import EmailMessage
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

TEMPLATES = ("trial-ending-3d", "trial-ending-1d", "tier-expired")
TEMPLATE_HEADER = "X-Jobs-Pipeline-Template"
MESSAGE_ID_DOMAIN = "jobs-pipeline"

environment = Environment(
    loader=PackageLoader("jobs_pipeline.emails", "templates"),
    autoescape=select_autoescape(enabled_extensions=("html", "html.j2"), default=False),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)


def readable_time(value: Any) -> str:
    """`2026-03-03T14:00:00+00:00` -> `3 March 2026, 14:00 UTC`."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return f"{moment.day} {moment:%B %Y, %H:%M} UTC"


def display_name(email: str) -> str:
    """The app keeps no names: the part of the address before the @ stands in."""
    return email.split("@", 1)[0]


def message_id(dedupe_key: str) -> str:
    """The same `Message-ID` for every send of one outbox row, and no personal data in it."""
    digest = hashlib.sha256(dedupe_key.encode()).hexdigest()[:32]
    return f"<{digest}@{MESSAGE_ID_DOMAIN}>"


def render(
    template: str, recipient: str, payload: dict[str, Any], *, dedupe_key: str
) -> EmailMessage:
    """The message for one outbox row: subject, a plain-text body and an HTML alternative,
    with its template's name and a `Message-ID` from the row's `dedupe_key` as headers.
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown email template {template!r}")
    context = {**payload, "email": recipient, "name": display_name(recipient)}
    for key in ("trial_ends_at", "expired_at"):
        if key in context and context[key] is not None:
            context[key] = readable_time(context[key])
    message = EmailMessage()
    message["To"] = recipient
    message["Message-ID"] = message_id(dedupe_key)
    message[TEMPLATE_HEADER] = template
    message["Subject"] = environment.get_template(f"{template}.subject.j2").render(context).strip()
    message.set_content(environment.get_template(f"{template}.txt.j2").render(context))
    message.add_alternative(
        environment.get_template(f"{template}.html.j2").render(context), subtype="html"
    )
    return message
