"""Outgoing mail as a Dagster resource: SMTP when `SMTP_HOST` is set, else .eml files.

With no SMTP configured (the embedded default), messages are written as .eml files
under the project-local state folder (`$JOBS_PIPELINE_STATE_DIR/outbox`, else
`.jobs-pipeline/outbox` in the checkout, whatever `DATABASE_URL` says), so a
developer can open real messages without a mail server.
"""

import smtplib
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import dagster as dg
from pydantic import Field

from jobs_pipeline.storage.embedded import state_dir


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

    def send(self, message: EmailMessage) -> str:
        """Sends one message; returns where it went (the SMTP host, or the file written)."""
        if message["From"] is None:
            message["From"] = self.sender
        if self.host:
            self.send_smtp(message)
            return f"smtp://{self.host}:{self.port}"
        return str(self.write_eml(message))

    def send_smtp(self, message: EmailMessage) -> None:
        assert self.host is not None
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_seconds) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.send_message(message)

    def eml_folder(self) -> Path | None:
        """Where `send` writes .eml files; None when it sends over SMTP."""
        return None if self.host else self.outbox_folder()

    def outbox_folder(self) -> Path:
        """`outbox_dir`, else the state folder's `outbox`: it follows JOBS_PIPELINE_STATE_DIR,
        never DATABASE_URL, so a run against another database still writes into this checkout.
        """
        folder = Path(self.outbox_dir) if self.outbox_dir else state_dir() / "outbox"
        return folder.resolve()

    def write_eml(self, message: EmailMessage) -> Path:
        folder = self.outbox_folder()
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        path = folder / f"{stamp}-{uuid.uuid4().hex[:12]}.eml"
        path.write_bytes(message.as_bytes())
        return path
