"""Outgoing mail as a Dagster resource: SMTP when `SMTP_HOST` is set, else .eml files.

With no SMTP configured (the embedded default), messages are written as .eml files
under the project-local state folder (`$JOBS_PIPELINE_STATE_DIR/outbox`, else
`.jobs-pipeline/outbox` in the checkout, whatever `DATABASE_URL` says), so a
developer can open real messages without a mail server.
"""

import smtplib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import dagster as dg
from pydantic import Field

from jobs_pipeline.storage.embedded import state_dir


@dataclass(frozen=True)
class SmtpTransport:
    """A mail server: one connection a message, logged in when a user is set."""

    host: str
    port: int
    username: str | None
    password: str | None
    starttls: bool
    timeout_seconds: float

    def deliver(self, message: EmailMessage) -> str:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_seconds) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.send_message(message)
        return f"smtp://{self.host}:{self.port}"


@dataclass(frozen=True)
class EmlFiles:
    """A folder of .eml files, one a message: real messages a developer can open."""

    folder: Path

    def deliver(self, message: EmailMessage) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        path = self.folder / f"{stamp}-{uuid.uuid4().hex[:12]}.eml"
        path.write_bytes(message.as_bytes())
        return str(path)


class Mailer(dg.ConfigurableResource):
    """SMTP (`SMTP_HOST`, `SMTP_PORT`, `SMTP_USERNAME`, `SMTP_PASSWORD`, `SMTP_FROM`,
    `SMTP_STARTTLS`), or .eml files in the outbox folder when no host is set.
    """

    host: str | None = Field(default=None, description="SMTP server; unset writes .eml files.")
    port: int = Field(default=25, description="SMTP port (SMTP_PORT).")
    username: str | None = Field(default=None, description="Log in when set.")
    password: str | None = Field(default=None, description="From SMTP_PASSWORD only.")
    sender: str = Field(default="jobs-pipeline@localhost", description="The From address.")
    starttls: bool = Field(default=False, description="Upgrade the connection with STARTTLS.")
    outbox_dir: str | None = Field(
        default=None,
        description=(
            "Where .eml files go without SMTP (default: the state folder's `outbox`,"
            " i.e. $JOBS_PIPELINE_STATE_DIR/outbox or .jobs-pipeline/outbox)."
        ),
    )
    timeout_seconds: float = Field(default=15, gt=0)

    def transport(self) -> SmtpTransport | EmlFiles:
        """SMTP when a host is set, else the .eml folder: the one place that chooses."""
        if self.host:
            return SmtpTransport(
                self.host,
                self.port,
                self.username,
                self.password,
                self.starttls,
                self.timeout_seconds,
            )
        return EmlFiles(self.outbox_folder())

    def send(self, message: EmailMessage) -> str:
        """Sends one message; returns where it went (the SMTP host, or the file written)."""
        if message["From"] is None:
            message["From"] = self.sender
        return self.transport().deliver(message)

    def eml_folder(self) -> Path | None:
        """Where `send` writes .eml files; None when it sends over SMTP."""
        transport = self.transport()
        return transport.folder if isinstance(transport, EmlFiles) else None

    def outbox_folder(self) -> Path:
        """`outbox_dir`, else the state folder's `outbox`: it follows JOBS_PIPELINE_STATE_DIR,
        never DATABASE_URL, so a run against another database still writes into this checkout.
        """
        folder = Path(self.outbox_dir) if self.outbox_dir else state_dir() / "outbox"
        return folder.resolve()
